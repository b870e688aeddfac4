"""Near-duplicate clusters: the pairs FAISS finds are exactly the pairs within the radius (a brute-force
Hamming check), clusters are their connected components on any number of shards, later passes merge new
rows, and ``--one-per-cluster`` selects what a walk of the full ranking that skips taken clusters selects."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from nagindex.errors import NagIndexError
from nagindex.index import clusters as cl
from nagindex.index.derived import fingerprints
from nagindex.index.sharded import open_index
from nagindex.ingest.interop import write_features
from nagindex.query.request import TargetRequest
from nagindex.query.run import query
from tests.query import pools

SIZES = (500, 40, 700, 5, 180)


def _write_pool_with_copies(root: Path, seed: int = 0) -> list[Path]:
    """``pools.write_pool`` plus a file of near-copies: 120 documents whose NAG is another pool document's
    with 0-3 neurons changed (distance 0-6 bits), some of them copies of copies (chains)."""
    files = pools.write_pool(root, SIZES, seed)
    rng = np.random.default_rng(seed + 10)
    from nagindex.sources.features import read_features

    rows = list(read_features(files, "fwd_up", **pools.SHAPE))
    codes, ids = [], []
    for i in range(120):
        src = rows[int(rng.integers(len(rows)))][1] if i < 90 else codes[int(rng.integers(len(codes)))]
        c = src.copy()
        for _ in range(int(rng.integers(0, 4))):
            layer, slot = int(rng.integers(c.shape[0])), int(rng.integers(c.shape[1]))
            free = np.setdiff1d(np.arange(pools.SHAPE["width"]), c[layer])
            c[layer, slot] = rng.choice(free)
        codes.append(c)
        ids.append(f"copy-{i:03d}")
    path = root / "copies.jsonl"
    write_features(path, ids, np.stack(codes))
    with open(root / "payload.jsonl", "a", encoding="utf-8") as fh:
        for d in ids:
            fh.write(json.dumps({"docid": d, "token_num": int(rng.integers(1, 400))}) + "\n")
    return [*files, path]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clusters")
    files = _write_pool_with_copies(root / "data")
    out = dict(pools.write_targets(root / "data"))
    for shards in (1, 2, 7):
        out[f"idx{shards}"] = pools.build_index(files, root / f"idx{shards}", shards)
    return out


def _partition(index: Path) -> set[frozenset[str]]:
    """Clusters of the index as sets of docids (documents without a near-duplicate left out)."""
    from nagindex.index.sharded import shard_specs

    groups: dict[int, set[str]] = {}
    for spec in shard_specs(index):
        view = open_index(spec["path"])
        labels = np.fromfile(Path(spec["path"]) / cl.CLUSTER_FILE, dtype="<i8")
        visible = np.setdiff1d(np.arange(len(view)), spec["hidden"])
        for row, docid in zip(visible, view.docids.take(visible)):
            if labels[row] >= 0:
                groups.setdefault(int(labels[row]), set()).add(docid)
    return {frozenset(g) for g in groups.values()}


def _brute_partition(index: Path, radius: int) -> set[frozenset[str]]:
    """Every pair's Hamming distance in numpy, then connected components (scipy)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    view = open_index(index)
    fp = fingerprints(np.asarray(view.codes), pools.SHAPE["width"]).view("<u8")
    a, b = [], []
    for i in range(len(fp)):
        d = np.bitwise_count(fp ^ fp[i]).sum(axis=1)
        j = np.flatnonzero(d <= radius)
        a.append(np.full(len(j), i))
        b.append(j)
    a, b = np.concatenate(a), np.concatenate(b)
    n, labels = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(len(fp), len(fp))))
    ids = view.docids.take(np.arange(len(fp)))
    size = np.bincount(labels)
    groups: dict[int, set[str]] = {}
    for docid, lab in zip(ids, labels):
        if size[lab] > 1:
            groups.setdefault(int(lab), set()).add(docid)
    return {frozenset(g) for g in groups.values()}


@pytest.mark.parametrize("radius", [0, 4, 12])
def test_both_methods_find_every_pair_within_the_radius_on_any_number_of_shards(data, radius, tmp_path):
    expected = _brute_partition(data["idx1"], radius)
    assert any(len(g) > 2 for g in expected)  # chains of copies
    for shards in (1, 2, 7):
        for method in cl.METHODS:
            res = cl.build_clusters(data[f"idx{shards}"], radius=radius, method=method)
            assert _partition(data[f"idx{shards}"]) == expected, (shards, method)
            assert res.clusters == len(expected)
            assert res.clustered_rows == sum(len(g) for g in expected)
            assert res.rows == res.searched == len(open_index(data[f"idx{shards}"]))


def test_multihash_beyond_63_bits_finds_a_subset_of_the_exact_pairs(data):
    cl.build_clusters(data["idx2"], radius=30, method="flat")
    exact = _partition(data["idx2"])
    cl.build_clusters(data["idx2"], radius=30, method="multihash")
    found = _partition(data["idx2"])
    for group in found:  # every multihash cluster lies inside one exact cluster
        assert any(group <= g for g in exact)
    assert exact == _brute_partition(data["idx1"], 30)


@pytest.mark.parametrize("radius", [40, 100, 160])
def test_multihash_finds_exactly_the_pairs_of_faiss_multi_hash_index(radius, monkeypatch):
    """Dense fingerprints (~15% of bits set) and near-copies 0-300 bits away, on two shards with hidden
    rows and only some rows new: the sort join's pairs are FAISS ``IndexBinaryMultiHash(4096, 64, 64)``'s
    (nflip 0) with a new row on one side, hidden rows left out, each pair once. Tiny blocks and tiles
    exercise the packing and the tiling of long runs."""
    import faiss

    monkeypatch.setattr(cl, "_PAIR_ROWS", 7)
    monkeypatch.setattr(cl, "_SEGMENT", 5)
    monkeypatch.setattr(cl, "_KEY_BUDGET", 8 * 700 * 5)  # 5 chunk columns per pass
    rng = np.random.default_rng(radius)
    base = np.packbits(rng.random((300, 4096)) < 0.15, axis=1)
    rows = [base]
    for flips in (0, 10, 30, 60, 90, 120, 200, 300):
        src = base[rng.integers(0, len(base), 50)]
        bits = np.unpackbits(src, axis=1)
        for r in bits:
            r[rng.choice(4096, flips, replace=False)] ^= 1
        rows.append(np.packbits(bits, axis=1))
    same = np.tile(base[:1], (12, 1))  # a long run of one value in every chunk
    codes = np.concatenate([*rows, same])[rng.permutation(712)]
    shards = [codes[:400], codes[400:]]
    offsets = np.array([0, 400, 712])
    hidden = [np.zeros(0, np.int64), np.array([3, 50, 200], np.int64)]
    queries = [np.arange(250, 400), cl._visible(np.arange(312), hidden[1])]  # shard 0: rows from 250 on are new
    a, b = cl._search(shards, offsets, hidden, queries, radius, "multihash")
    got = set(zip(a.tolist(), b.tolist()))
    assert len(got) == len(a)  # each pair once, (smaller, larger)
    assert all(x < y for x, y in got)
    index = faiss.IndexBinaryMultiHash(4096, 64, 64)
    index.nflip = 0
    index.add(codes)
    lims, _, labels = index.range_search(codes, radius + 1)
    qi = np.repeat(np.arange(len(codes)), np.diff(lims.astype(np.int64)))
    out = {400 + h for h in hidden[1].tolist()}
    new = set(range(250, 400)) | {400 + q for q in queries[1].tolist()}
    expected = {(min(x, y), max(x, y)) for x, y in zip(qi.tolist(), labels.tolist())
                if x != y and x not in out and y not in out and (x in new or y in new)}
    assert got == expected
    assert len(expected) > 100


def test_a_later_pass_searches_only_new_rows_and_merges_them(tmp_path):
    files = _write_pool_with_copies(tmp_path / "data")
    index = pools.build_index(files[:3], tmp_path / "idx")  # copies come later
    first = cl.build_clusters(index, radius=4)
    assert first.searched == first.rows
    pools.build_index(files[3:], index)  # append the rest, copies of earlier documents included
    second = cl.build_clusters(index, radius=4)
    assert second.searched == second.rows - first.rows
    merged = _partition(index)
    assert merged == _brute_partition(index, 4)
    again = cl.build_clusters(index, radius=4)
    assert again.searched == 0 and _partition(index) == merged
    changed = cl.build_clusters(index, radius=3)  # another radius: from scratch
    assert changed.searched == changed.rows and _partition(index) == _brute_partition(index, 3)


def test_info_shows_the_clusters_and_documents_added_since(tmp_path):
    from nagindex.index.info import describe_index
    from nagindex.index.sharded import shard_specs

    files = _write_pool_with_copies(tmp_path / "data")
    index = pools.build_index([*files[:3], files[-1]], tmp_path / "idx", 2)
    assert "clusters         none (`nagindex cluster` makes them" in describe_index(index)
    res = cl.build_clusters(index, radius=4)
    assert res.clusters > 0
    line = f"clusters         {res.clusters:,} holding {res.clustered_rows:,} documents (radius 4, multihash)"
    assert f"{line}\n" in describe_index(index)
    pools.build_index(files[3:4], index)
    added = sum(len(open_index(s["path"])) for s in shard_specs(index)) - res.rows
    assert added > 0
    assert f"{line}; {added:,} documents added since: run `nagindex cluster` again" in describe_index(index)


def test_a_pass_killed_before_its_info_file_starts_over(data, monkeypatch):
    index = data["idx2"]
    cl.build_clusters(index, radius=4)
    (Path(index) / cl.CLUSTER_INFO).unlink()  # what a kill between the shard files and the info leaves
    res = cl.build_clusters(index, radius=4)
    assert res.searched == res.rows and _partition(index) == _brute_partition(data["idx1"], 4)


def _walk(order: list[str], tokens: dict[str, int], cluster_of: dict[str, str], k: int | None,
          budget: int | None) -> list[str]:
    """The oracle: the full ranking walked in order, skipping a document whose cluster is taken."""
    out, taken, spent = [], set(), 0
    for docid in order:
        key = cluster_of.get(docid, docid)
        if key in taken:
            continue
        if k is not None and len(out) == k:
            break
        if budget is not None and spent + tokens[docid] > budget:
            if not out:
                out.append(docid)
            break
        out.append(docid)
        taken.add(key)
        spent += tokens[docid]
    return out


@pytest.mark.parametrize("quota", [{"k": 60}, {"tokens": 20000}])
def test_one_per_cluster_is_the_ranking_with_taken_clusters_skipped(data, quota, tmp_path):
    target = [TargetRequest("features", str(data["alpha"]))]
    for shards in (1, 2, 7):
        cl.build_clusters(data[f"idx{shards}"], radius=6)
    full = query(target, data["idx1"], k=10_000).table
    order = full.column("docid").to_pylist()
    tokens = dict(zip(order, full.column("token_count").to_pylist()))
    cluster_of = {d: min(g) for g in _partition(data["idx1"]) for d in g}
    # the clusters really bite: the plain selection holds several members of one cluster
    plain = query(target, data["idx1"], **quota).table.column("docid").to_pylist()
    assert len({cluster_of.get(d, d) for d in plain}) < len(plain)
    expected = _walk(order, tokens, cluster_of, quota.get("k"), quota.get("tokens"))
    tables = []
    for shards in (1, 2, 7):
        out = tmp_path / f"{shards}.parquet"
        query(target, data[f"idx{shards}"], one_per_cluster=True, out=out, **quota)
        tables.append(pq.read_table(out))
    assert tables[0].column("docid").to_pylist() == expected
    assert tables[1].equals(tables[0]) and tables[2].equals(tables[0])
    manifest = json.loads((tmp_path / "1.parquet.manifest.json").read_text())
    assert manifest["one_per_cluster"] == {"radius": 6, "method": "multihash"}


def test_union_mixture_takes_one_document_per_cluster_across_targets(data):
    cl.build_clusters(data["idx2"], radius=6)
    targets = [TargetRequest("features", str(data["alpha"])), TargetRequest("features", str(data["alpha"]))]
    res = query(targets, data["idx2"], k=200, mode="union", one_per_cluster=True)
    cluster_of = {d: min(g) for g in _partition(data["idx2"]) for d in g}
    docids = res.table.column("docid").to_pylist()
    assert len(docids) == 200
    assert len({cluster_of.get(d, d) for d in docids}) == 200


def test_queries_refuse_missing_or_stale_clusters(tmp_path):
    files = _write_pool_with_copies(tmp_path / "data")
    target = [TargetRequest("features", str(pools.write_targets(tmp_path / "data")["alpha"]))]
    index = pools.build_index(files[:2], tmp_path / "idx")
    with pytest.raises(NagIndexError, match="nagindex cluster"):
        query(target, index, k=5, one_per_cluster=True)
    cl.build_clusters(index, radius=4)
    pools.build_index(files[2:3], index)
    with pytest.raises(NagIndexError, match=r"cover 540 of the shard's 1,240 documents.*nagindex cluster"):
        query(target, index, k=5, one_per_cluster=True)


def test_cli_clusters_once_then_keeps_the_radius_and_selects_one_per_cluster(tmp_path):
    from click.testing import CliRunner

    from nagindex.cli import main

    files = _write_pool_with_copies(tmp_path / "data")
    alpha = pools.write_targets(tmp_path / "data")["alpha"]
    index = pools.build_index(files, tmp_path / "idx")
    runner = CliRunner()
    res = runner.invoke(main, ["cluster", "--index", str(index), "--radius", "5"])
    assert res.exit_code == 0, res.output
    expected = _brute_partition(index, 5)
    assert f"{len(expected):,} clusters holding {sum(len(g) for g in expected):,} of 1,542 documents (radius 5, " \
           "multihash; 1,542 documents searched" in res.output
    res = runner.invoke(main, ["cluster", "--index", str(index)])  # the stored radius, nothing new to search
    assert res.exit_code == 0 and "(radius 5, multihash; 0 documents searched, 0 pairs" in res.output
    out = tmp_path / "sel.parquet"
    res = runner.invoke(main, ["query", "--index", str(index), "--target-features", str(alpha), "--k", "80",
                               "--one-per-cluster", "-o", str(out)])
    assert res.exit_code == 0, res.output
    cluster_of = {d: min(g) for g in expected for d in g}
    docids = pq.read_table(out).column("docid").to_pylist()
    assert len(docids) == 80 == len({cluster_of.get(d, d) for d in docids})
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    assert manifest["one_per_cluster"] == {"radius": 5, "method": "multihash"}
