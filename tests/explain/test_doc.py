"""``explain --doc``: a document's score is the sum of its per-layer, per-neuron contributions, and its rank is
the query's (score descending, docid ascending) over the whole index."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nagindex.errors import NagIndexError
from nagindex.explain.doc import explain_doc
from nagindex.explain.profile import target_profile_codes
from nagindex.index.sharded import open_index
from nagindex.query.profile import count_profile, profile_weights
from nagindex.query.request import TargetRequest
from nagindex.query.score import score_codes


@pytest.fixture(scope="module")
def scored(prose_index, arith_target):
    """The target request, the index's view, its count profile and every document's exact score."""
    target = TargetRequest("file", str(arith_target))
    codes = target_profile_codes(target, prose_index, None, 0, "cpu")[0]
    view = open_index(prose_index)
    counts = count_profile(codes, view.manifest["width"])
    return target, view, counts, score_codes(np.asarray(view.codes), counts)


@pytest.mark.parametrize("pick", [0, 17, 119])
def test_contributions_sum_to_the_score_and_rank_is_the_querys(prose_index, scored, pick):
    target, view, counts, scores = scored
    docids = view.docids.arrow().to_pylist()
    order = sorted(range(len(docids)), key=lambda r: (-int(scores.raw[0, r]), docids[r]))
    row = order[pick]
    res = explain_doc(target, prose_index, docids[row], device="cpu")
    assert (res.rank, res.pool_docs) == (pick + 1, 120)
    assert res.percentile == pytest.approx(100 * (119 - pick) / 120)
    assert res.score == scores.similarity[0, row]
    shared = [s for layer in res.layers for s in layer.shared]
    assert sum(s.target_count for s in shared) == scores.raw[0, row]  # the exact integer numerator
    assert sum(layer.contribution for layer in res.layers) == pytest.approx(res.score, rel=1e-12)
    for layer in res.layers:
        assert sum(s.contribution for s in layer.shared) == pytest.approx(layer.contribution, rel=1e-12)
        nag = np.asarray(view.codes[row, layer.layer])
        assert sorted(s.neuron for s in layer.shared) == sorted(int(n) for n in nag if counts[layer.layer, n] > 0)
        terms = [s.contribution for s in layer.shared]
        assert terms == sorted(terms, reverse=True)
    corpus = {json.loads(line)["docid"]: json.loads(line)["doc"]
              for line in (prose_index.parent / "corpus.jsonl").read_text().splitlines()}
    assert res.text == corpus[docids[row]]
    assert res.table().splitlines()[0].startswith(f"{docids[row]} for arith: score ")


def test_power_and_weighting_contributions_sum_to_their_scores(prose_index, scored):
    target, view, counts, _ = scored
    docid = view.docids.take([5])[0]
    res = explain_doc(target, prose_index, docid, power=2.0, with_text=False, device="cpu")
    expected = score_codes(np.asarray(view.codes[5:6]), counts, power=2.0).similarity[0, 0]
    assert res.score == pytest.approx(expected, rel=1e-12) and res.text is None
    assert sum(s.contribution for layer in res.layers for s in layer.shared) == pytest.approx(res.score, rel=1e-12)
    weights = profile_weights(counts, 2.0)
    first = res.layers[0].shared[0]
    assert first.contribution == pytest.approx(weights[0, first.neuron] / view.manifest["num_layers"], rel=1e-12)
    lift = explain_doc(target, prose_index, docid, weighting="lift", with_text=False, device="cpu")
    assert sum(s.contribution for layer in lift.layers for s in layer.shared) == pytest.approx(lift.score, rel=1e-12)
    assert lift.score != res.score


def test_unknown_docid_is_an_error(prose_index, scored):
    with pytest.raises(NagIndexError, match="docid 'nope' is not in index"):
        explain_doc(scored[0], prose_index, "nope", device="cpu")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same documents (each with a text) as one folder and as three shards, and a features target."""
    from tests.query import pools

    root = tmp_path_factory.mktemp("explain_layouts")
    files = pools.write_pool(root / "data", sizes=(300, 40, 3, 120), texts=lambda docid: f"the text of {docid}")
    target = TargetRequest("features", str(pools.write_targets(root / "data")["alpha"]))
    return target, pools.build_index(files, root / "one"), pools.build_index(files, root / "three", 3)


def test_a_docid_of_the_last_shard_explains_as_on_one_folder(layouts):
    from nagindex.index.sharded import view_parts

    target, one, three = layouts
    last = view_parts(open_index(three))[-1]
    assert last.shard > 0 and len(last)
    docid = last.view.docids.take([int(last.kept()[-1])])[0]
    sharded = explain_doc(target, three, docid, device="cpu")
    assert sharded.to_dict() == explain_doc(target, one, docid, device="cpu").to_dict()
    assert sharded.text == f"the text of {docid}" and sharded.pool_docs == len(open_index(one))


def test_docids_of_every_shard_explain_together_as_on_one_folder(layouts):
    from nagindex.explain.doc import explain_docs
    from nagindex.index.sharded import view_parts
    from tests.query import pools

    target, one, three = layouts
    docids = [pools._docid(i) for i in range(3)]  # repeated by a later input: the index serves the first copy
    docids += [p.view.docids.take([int(p.kept()[0])])[0] for p in view_parts(open_index(three)) if len(p)]
    got = [e.to_dict() for e in explain_docs(target, three, docids, device="cpu")]
    assert got == [e.to_dict() for e in explain_docs(target, one, docids, device="cpu")]


def test_unknown_docid_is_an_error_on_three_shards(layouts):
    with pytest.raises(NagIndexError, match="docid 'nope' is not in index .*three"):
        explain_doc(layouts[0], layouts[2], "nope", device="cpu")
