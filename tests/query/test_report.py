"""``nagindex report`` on the golden pool: one HTML file, four real PNGs, the right overlap numbers."""
from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nagindex.cli import main
from nagindex.errors import NagIndexError
from nagindex.query.report import collect, jaccard_matrix, shared_share
from nagindex.query.report_page import write_report
from nagindex.query.request import TargetRequest
from nagindex.query.run import query

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def mixture_selection(golden_index, target_features, tmp_path_factory) -> Path:
    """The reference's multi_target case: sci picks pool_13, pool_01; story picks pool_11, 05, 07, 01."""
    out = tmp_path_factory.mktemp("rm") / "mix.parquet"
    targets = [TargetRequest("features", str(target_features[t])) for t in ("sci_target", "story_target")]
    query(targets, golden_index, fraction=0.6, mode="paper", out=out)
    return out


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def _assert_pngs(page: str) -> None:
    images = _images(page)
    assert len(images) == 4
    for png in images:
        assert png.startswith(PNG_MAGIC)
        assert len(png) > 2000  # a drawn figure, not an empty canvas


def test_single_target_report(golden_index, target_features, tmp_path):
    sel = tmp_path / "sci.parquet"
    query([TargetRequest("features", str(target_features["sci_target"]))], golden_index, fraction=0.3, out=sel)
    out = write_report(sel, golden_index, tmp_path / "report.html")
    page = out.read_text("utf-8")
    _assert_pngs(page)
    assert "sci_target" in page
    assert "reproduces the selection" in page  # the re-scored pool agrees with the file's scores
    assert "does NOT reproduce" not in page
    assert "15 documents" in page  # pool size in the summary
    assert "<table class='overlap'>" not in page  # one target: nothing to overlap


def test_mixture_report_overlap_is_right(mixture_selection, golden_index, tmp_path):
    out = write_report(mixture_selection, golden_index, tmp_path / "mix.html", group_by="docid-prefix")
    page = out.read_text("utf-8")
    _assert_pngs(page)
    assert "sci_target" in page and "story_target" in page
    # {13, 01} vs {11, 05, 07, 01}: 1 shared of 5 distinct docs
    values = [float(v) for v in re.findall(r"<td class='jaccard'>([0-9.]+)</td>", page)]
    assert values == pytest.approx([1.0, 0.2, 0.2, 1.0])
    assert re.search(r"<span class='shared'>([0-9.]+)</span>", page).group(1) == "0.2000"


def test_collect_recovers_the_selection(mixture_selection, golden_index):
    data = collect(mixture_selection, golden_index)
    assert [t.name for t in data.targets] == ["sci_target", "story_target"]
    assert all(t.matches for t in data.targets)
    assert data.pool.docs == 15 and data.pool.sel_similarity.shape == (2, len(data.sel_rows))
    assert data.pool.hist_counts.sum(axis=1).tolist() == [15, 15]
    assert data.contributions.shape[1] == 4  # 4 layers
    # each top doc's per-layer parts sum to its score for the target that chose it
    sci = data.sel_target == 0
    sci_scores = np.unique(data.pool.sel_similarity[0][sci])
    np.testing.assert_allclose(data.contributions.sum(axis=1)[:len(np.unique(data.sel_rows[sci]))],
                               np.sort(sci_scores)[::-1], rtol=0, atol=1e-12)


def test_overlap_helpers():
    sets = [{"a", "b", "c"}, {"b", "c", "d"}, set()]
    m = jaccard_matrix(sets)
    assert m[0, 1] == pytest.approx(0.5) and m[0, 2] == 0.0 and np.all(np.diag(m) == 1.0)
    assert shared_share(sets) == pytest.approx(0.5)  # b, c of a, b, c, d


def test_cli_report(mixture_selection, golden_index, tmp_path):
    out = tmp_path / "cli.html"
    result = CliRunner().invoke(main, ["report", str(mixture_selection), "--index", str(golden_index), "-o",
                                       str(out), "--group-by", "docid-prefix"])
    assert result.exit_code == 0, result.output
    page = out.read_text("utf-8")
    plots, explained = page.split("<h2>Explanation: profile neurons and top documents</h2>")
    assert len(_images(plots)) == 4  # the report's own plots, then per target its profile and each top document
    links = re.findall(r"<a href='#explain-(\d+)-(\d+)'>", explained)
    assert len({t for t, _ in links}) == 2 and len(_images(explained)) == 2 + len(links)
    assert str(out) in result.output


def test_report_never_overwrites_the_selection(mixture_selection, golden_index):
    before = mixture_selection.read_bytes()
    with pytest.raises(NagIndexError, match="use a .html file name"):
        write_report(mixture_selection, golden_index, mixture_selection)
    assert mixture_selection.read_bytes() == before


def test_missing_manifest_is_a_clear_error(mixture_selection, golden_index, tmp_path):
    lone = tmp_path / "lone.parquet"
    lone.write_bytes(mixture_selection.read_bytes())
    with pytest.raises(NagIndexError, match="manifest"):
        write_report(lone, golden_index, tmp_path / "x.html")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """The same 2,463 records (3 ids repeated across files) as a one-folder index and as 3 shards, and a
    two-target selection made on the one-folder index."""
    from tests.query import pools

    root = tmp_path_factory.mktemp("layouts")
    files = pools.write_pool(root / "data", sizes=(300, 40, 3, 120, 2000))
    targets = pools.write_targets(root / "data")
    one, three = pools.build_index(files, root / "one"), pools.build_index(files, root / "three", 3)
    sel = root / "mix.parquet"
    query([TargetRequest("features", str(targets[t])) for t in ("alpha", "beta")], one, fraction=0.2, out=sel)
    return {"one": one, "three": three, "sel": sel, "alpha": targets["alpha"], "beta": targets["beta"]}


def _expected_pool(layouts: dict[str, Path]) -> dict[str, object]:
    """The report's pool figures by brute force on the one-folder index: every document scored at once."""
    import pyarrow.parquet as pq

    from nagindex.index.dedup import docid_hashes
    from nagindex.index.sharded import open_index
    from nagindex.query.profile import count_profile
    from nagindex.query.score import score_codes
    from nagindex.sources.features import read_features
    from tests.query import pools

    view = open_index(layouts["one"])
    profiles = np.stack([count_profile(np.stack([r[1] for r in read_features([layouts[t]], "fwd_up", **pools.SHAPE)]),
                                       pools.SHAPE["width"]) for t in ("alpha", "beta")])
    sim = score_codes(np.asarray(view.codes), profiles).similarity
    ids = view.docids.numpy().tolist()
    tokens = np.asarray(view.token_counts)
    groups: dict[str, int] = {}
    for source, n in zip(np.asarray(view.source_ids).tolist(), tokens.tolist()):
        name = Path(view.sources[source]).name
        groups[name] = groups.get(name, 0) + n
    row = {d: i for i, d in enumerate(ids)}
    sel_rows = [row[d] for d in pq.read_table(layouts["sel"]).column("docid").to_pylist()]
    edges = [np.histogram_bin_edges(s, bins=40) for s in sim]
    hashes = docid_hashes(view, 0)
    return {"docs": len(ids), "tokens": int(tokens.sum()), "groups": groups, "edges": edges,
            "counts": [np.histogram(s, bins=e)[0].tolist() for s, e in zip(sim, edges)],
            "sel_similarity": sim[:, sel_rows],
            "sample": [ids[i] for i in np.lexsort((np.arange(len(ids)), hashes))[:2000]],
            "sel_rank_tokens": [int(tokens[sim[0] >= sim[0, r]].sum()) for r in sel_rows]}


def test_report_streamed_over_shards_equals_the_whole_pool(layouts):
    """One folder or 3 shards: the merged histograms, groups, selection scores, ranked curve and sample are
    what scoring every document at once gives, and the pool's per-layer profile is bit for bit the same."""
    from nagindex.index.sharded import open_index, take_docids

    want = _expected_pool(layouts)
    got = {name: collect(layouts["sel"], layouts[name]) for name in ("one", "three")}
    for name, data in got.items():
        pool = data.pool
        assert (pool.docs, pool.tokens) == (want["docs"], want["tokens"]) == (2460, want["tokens"])
        assert pool.group_tokens == want["groups"]
        assert pool.hist_counts.tolist() == want["counts"]
        np.testing.assert_array_equal(pool.hist_edges, np.stack(want["edges"]))
        np.testing.assert_array_equal(pool.sel_similarity, want["sel_similarity"])
        assert pool.sel_rank_tokens.tolist() == want["sel_rank_tokens"]
        assert take_docids(open_index(layouts[name]), pool.sample_rows) == want["sample"]
        assert all(t.matches for t in data.targets)
    one, three = got["one"], got["three"]
    assert one.contrib_labels == three.contrib_labels and len(one.contrib_labels) == 20
    np.testing.assert_array_equal(one.contributions, three.contributions)
    np.testing.assert_array_equal(one.pool_contrib, three.pool_contrib)
    np.testing.assert_array_equal(one.pool.rank_tokens, three.pool.rank_tokens)
    assert one.sel_groups.tolist() == three.sel_groups.tolist()
    from nagindex.query.report_page import _summary_rows

    assert _summary_rows(one) == _summary_rows(three)


def test_a_selection_written_by_the_shards_reports_as_its_one_file(layouts, tmp_path, monkeypatch):
    """``query -o DIR`` (each shard writes its part) gives the report of the same selection as one file; the
    target check re-scores a spread sample of the selection rows (``REPRODUCE_ROWS``) and still tells changed
    target examples."""
    from nagindex.query import report as report_mod

    targets = [TargetRequest("features", str(layouts[t])) for t in ("alpha", "beta")]
    query(targets, layouts["three"], fraction=0.2, out=tmp_path / "one.parquet")
    query(targets, layouts["three"], fraction=0.2, out=tmp_path / "parts")
    monkeypatch.setattr(report_mod, "REPRODUCE_ROWS", 5)
    file, parts = collect(tmp_path / "one.parquet", layouts["three"]), collect(tmp_path / "parts", layouts["three"])
    assert len(file.sel_rows) > 100 and all(t.matches for t in file.targets + parts.targets)
    for name in ("sel_rows", "sel_target", "sel_tokens", "sel_groups", "contributions"):
        np.testing.assert_array_equal(getattr(file, name), getattr(parts, name))
    np.testing.assert_array_equal(file.pool.sel_similarity, parts.pool.sel_similarity)
    assert file.contrib_labels == parts.contrib_labels
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "one.parquet")
    scores = table.column("score_alpha").to_numpy().copy()
    scores[::7] += 0.01  # a few rows' scores no longer what the examples give: caught by the spread sample
    pq.write_table(table.set_column(table.column_names.index("score_alpha"), "score_alpha", [scores]),
                   tmp_path / "one.parquet")
    assert [t.matches for t in collect(tmp_path / "one.parquet", layouts["three"]).targets] == [False, True]
