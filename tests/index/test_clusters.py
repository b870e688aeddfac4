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
from nagindex.index import pairs
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

    monkeypatch.setattr(pairs, "_PAIR_ROWS", 7)
    monkeypatch.setattr(pairs, "_SEGMENT", 5)
    monkeypatch.setattr(pairs, "_KEY_BUDGET", 8 * 700 * 5)  # 5 chunk columns per pass
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
    queries = [np.arange(250, 400), pairs.visible(np.arange(312), hidden[1])]  # shard 0: rows from 250 on are new
    a, b = pairs.pair_list(shards, offsets, hidden, queries, radius, "multihash")
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


def _expected_links(index: Path, radius: int) -> int:
    """What a pass links below 64 bits: each visible copy of an identical fingerprint to its group's first,
    then every pair of distinct fingerprints within the radius (brute force)."""
    from nagindex.index.sharded import shard_specs

    fps = []
    for spec in shard_specs(index):
        view = open_index(spec["path"])
        visible = np.setdiff1d(np.arange(len(view)), spec["hidden"])
        fps.append(np.asarray(view.faiss_index().codes)[visible])
    distinct = np.unique(np.concatenate(fps), axis=0).view("<u8")
    d = np.stack([np.bitwise_count(distinct ^ row).sum(axis=1) for row in distinct])
    return sum(len(f) for f in fps) - len(distinct) + int(np.count_nonzero(np.triu(d <= radius, 1)))


@pytest.mark.parametrize("run", [{"workers": 2}, {"workers": 2, "ray_address": "local"}])
def test_chunk_tasks_on_processes_or_ray_give_the_same_clusters_and_links(data, run, tmp_path):
    """Identical copies (0 neurons changed) collapse before the search; the chunk columns go to 2 processes
    (or Ray tasks), each task's forest merged here: the clusters of one process, and the links counted once,
    on 7 shards with hidden repeats, and on a later pass over new rows."""
    import ray

    started = not ray.is_initialized()
    (Path(data["idx7"]) / cl.CLUSTER_INFO).unlink(missing_ok=True)  # from scratch, whatever ran before
    try:
        res = cl.build_clusters(data["idx7"], radius=4, **run)
        assert _partition(data["idx7"]) == _brute_partition(data["idx1"], 4)
        assert res.pairs == _expected_links(data["idx7"], 4)
        files = _write_pool_with_copies(tmp_path / "data")
        index = pools.build_index(files[:3], tmp_path / "idx", 2)
        first = cl.build_clusters(index, radius=4, **run)
        pools.build_index(files[3:], index, 2)
        again = cl.build_clusters(index, radius=4, **run)
        assert again.searched == again.rows - first.rows and _partition(index) == _brute_partition(index, 4)
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def test_both_methods_count_each_link_once(data):
    """Below 64 bits both methods link the same: each identical copy once, each pair of distinct
    fingerprints once (flat finds a pair of two new rows from both sides and keeps one)."""
    for method in cl.METHODS:
        (Path(data["idx7"]) / cl.CLUSTER_INFO).unlink(missing_ok=True)
        assert cl.build_clusters(data["idx7"], radius=12, method=method).pairs == _expected_links(data["idx7"], 12)


def test_fingerprints_whose_hashes_collide_are_compared_whole(data, monkeypatch):
    """Every fingerprint given one hash: only rows equal to their group's first are taken as copies; the
    others are searched like any row, so the clusters do not change."""
    monkeypatch.setattr(pairs, "_hash_rows", lambda block: np.zeros(len(block), np.uint64))
    (Path(data["idx2"]) / cl.CLUSTER_INFO).unlink(missing_ok=True)
    cl.build_clusters(data["idx2"], radius=4)
    assert _partition(data["idx2"]) == _brute_partition(data["idx1"], 4)


_MEMORY_SCRIPT = """
import sys, numpy as np
from nagindex.index import pairs

def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))

def cluster(fp):
    search = pairs.PairSearch([fp], np.array([0, len(fp)]), [np.zeros(0, np.int64)], [np.arange(len(fp))], 100)
    parent = np.arange(len(fp), dtype=np.int64)
    return pairs.link(parent, search, "multihash", 1, None, False), pairs.find_roots(parent)

fp = np.memmap(sys.argv[1], dtype="u1", mode="r").reshape(-1, 512)
cluster(np.array(fp[-50:]))  # numba kernels loaded outside the measure
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
before = status("VmRSS:")
links, roots = cluster(fp)
print(status("VmHWM:") - before, links, np.bincount(roots).max(), np.count_nonzero(np.bincount(roots) > 1))
"""


def test_a_hundred_thousand_identical_copies_cluster_in_bounded_memory(tmp_path):
    """10^5 identical fingerprints (5x10^9 pairs, 80 GB as a pair list), 2,000 near copies of the same one
    (5-20 bits flipped) and 3,000 unrelated ones, memory-mapped: one cluster of 102,000 in under 150 MB
    of peak RSS over the process's before the pass (53 MB of it the mapped fingerprints read)."""
    import subprocess
    import sys

    rng = np.random.default_rng(7)
    base = rng.random(4096) < 0.14
    near = np.tile(base, (2000, 1))
    for row in near:
        row[rng.choice(4096, int(rng.integers(5, 21)), replace=False)] ^= True
    other = rng.random((3000, 4096)) < 0.14
    rows = np.concatenate([np.tile(np.packbits(base), (100_000, 1)), np.packbits(near, axis=1),
                           np.packbits(other, axis=1)])[rng.permutation(105_000)]
    path = tmp_path / "fingerprints.u8"
    rows.tofile(path)
    distinct = len(np.unique(np.packbits(near, axis=1), axis=0)) + 1
    del rows, near, other
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(path)], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout.split()
    growth_kb, links, largest, clusters = map(int, out)
    assert (largest, clusters) == (102_000, 1)
    assert links == 102_000 - distinct + distinct * (distinct - 1) // 2  # copies linked, then every pair of the rest
    assert growth_kb < 150 * 1024, f"peak RSS grew {growth_kb / 1024:.0f} MB"
