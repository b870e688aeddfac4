"""Cross-shard deduplication under appends: an incremental reconcile hides exactly what a full one would,
looking at the new ids only, and a sharded index answers from its last reconciled state while it appends."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from nagindex.errors import NagIndexError
from nagindex.index import dedup
from nagindex.index import derived as derived_mod
from nagindex.index.catalog import load_catalog
from nagindex.index.dedup import hidden_rows
from nagindex.index.derived import open_shard
from nagindex.index.info import describe_index
from nagindex.index.sharded import open_index, shard_specs
from nagindex.ingest import sharded as sharded_mod
from nagindex.ingest.interop import import_features, write_features
from nagindex.query.request import TargetRequest
from nagindex.query.run import query
from tests.ingest.test_sharded import _rows
from tests.query import pools

#: input files in import order (a first ingest, two appends), each a list of id numbers; repeats
#: within a file, across files of one ingest and across appends, some landing on the same shard
BATCHES = {
    "first": {"a0": [*range(60)], "a1": [*range(60, 100), 5, 6, 7], "a2": [*range(100, 180), 65, 62],
              "a3": [*range(180, 190), 0, 1, 181]},
    "second": {"b0": [*range(190, 260), 2, 61, 101, 185], "b1": [*range(260, 300), 3, 200, 262, 105]},
    "third": {"c0": [*range(300, 340), 4, 201, 270, 190, 150], "c1": [0, 190, 260, 300, *range(340, 350)]},
}


def _docid(i: int) -> str:
    return [f"u{i:04d}", f"https://example.org/{'x' * (i % 50)}/{i}", f"réseau-{i}-ü"][i % 3]


def _write(root: Path, name: str, ids: list[int], seed: int) -> Path:
    """A feature file of ``ids`` and a payload line per id (token count a function of the id)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.jsonl"
    write_features(path, [_docid(i) for i in ids], pools.codes_like(np.random.default_rng(seed), len(ids), seed % 3))
    with open(root / "payload.jsonl", "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"docid": _docid(i), "token_num": i * 37 % 301}, ensure_ascii=False) + "\n"
                      for i in ids)
    return path


def _grow(root: Path, name: str, ids: list[int], seed: int) -> None:
    """More lines at the end of input ``name`` (an input that grows after it was ingested)."""
    extra = _write(root / "more", name, ids, seed)
    with open(root / f"{name}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(extra.read_text("utf-8"))
    with open(root / "payload.jsonl", "a", encoding="utf-8") as fh:
        fh.write((root / "more" / "payload.jsonl").read_text("utf-8"))


def _batch(root: Path, batch: str) -> list[Path]:
    return [_write(root, name, ids, sum(map(ord, name))) for name, ids in BATCHES[batch].items()]


def _import(files: list[Path], index: Path, shards: int = 1) -> dict:
    return import_features(files, index, **pools.SHAPE, payload_paths=[files[0].parent / "payload.jsonl"],
                           token_field="token_num", shards=shards)


def _hidden_from_scratch(index: Path) -> list[list[int]]:
    """Every shard's rows hidden by the rule itself, from all rows: per docid, all but the copy of the
    earliest input (then position, then shard)."""
    catalog = load_catalog(index)
    rank = {item["key"]: i for i, item in enumerate(catalog.inputs)}
    best: dict[str, tuple] = {}
    rows = []
    for s, path in enumerate(catalog.shard_paths()):
        if not (path / "index_info.json").is_file():
            continue
        view = open_shard(path)
        for r, docid in enumerate(view.docids.take(range(len(view)))):
            key = (rank[view.sources[int(view.source_ids[r])]], int(view.positions[r]), s, r)
            rows.append((docid, key))
            best[docid] = min(best.get(docid, key), key)
    hidden: list[list[int]] = [[] for _ in catalog.shards]
    for docid, key in rows:
        if key != best[docid]:
            hidden[key[2]].append(key[3])
    return [sorted(h) for h in hidden]


def _hidden_now(index: Path) -> list[list[int]]:
    catalog = load_catalog(index)
    return [hidden_rows(catalog, s).tolist() for s in range(len(catalog.shards))]


def test_incremental_reconcile_hides_what_a_full_one_would_from_the_new_ids_only(tmp_path, monkeypatch):
    data, index = tmp_path / "data", tmp_path / "idx"
    files = []
    hashed: list[tuple[int, int]] = []  # (rows of the shard, first row hashed) per reconcile
    real = dedup.docid_hashes
    monkeypatch.setattr(dedup, "docid_hashes",
                        lambda view, start, stop: hashed.append((stop, start)) or real(view, start, stop))

    files += _batch(data, "first")
    _import(files, index, shards=3)
    first = load_catalog(index).dedup
    assert first["generation"] == 1 and all(start == 0 for _, start in hashed)
    assert _hidden_now(index) == _hidden_from_scratch(index) and first["hidden"] > 0
    for batch in ("second", "third"):
        before, hashed[:] = load_catalog(index).dedup["rows"], []
        files += _batch(data, batch)
        _import(files[-2:], index)
        # only the rows added since the last reconcile were hashed, only in shards that have some
        assert sorted(hashed) == sorted((n, b) for n, b in zip(load_catalog(index).dedup["rows"], before) if n > b)
        assert _hidden_now(index) == _hidden_from_scratch(index), batch
    # an earlier input grows: its new rows win over copies of later inputs reconciled before (hidden now)
    was_hidden = _hidden_now(index)
    _grow(data, "a1", [195, 270, 341, 400], 9)
    _import(files, index)
    expected = _hidden_from_scratch(index)
    assert _hidden_now(index) == expected
    assert any(set(e) - set(w) for e, w in zip(expected, was_hidden))  # a reconciled, visible row got hidden
    catalog = load_catalog(index)
    assert catalog.dedup["generation"] == 4 and catalog.dedup["hidden"] == sum(map(len, expected))
    assert sorted(p.name for p in index.glob("*.u64")) == sorted(
        [f"hidden-shard-0000{s}.{g}.u64" for s in range(3) for g in (3, 4)]
        + [f"reconciled-{k}.{g}.u64" for k in ("hashes", "rows") for g in (3, 4)])  # older generations removed
    hashes = np.fromfile(index / "reconciled-hashes.4.u64", "<u8")
    assert len(hashes) == sum(catalog.dedup["rows"]) and np.all(hashes[1:] >= hashes[:-1])
    hashed[:] = []
    assert _import(files, index)["hidden"] == catalog.dedup["hidden"]  # nothing new
    assert hashed == [] and load_catalog(index).dedup == catalog.dedup


def test_a_rebuilt_shard_is_refused_until_reconciled_again_from_scratch(tmp_path, monkeypatch):
    data, index = tmp_path / "data", tmp_path / "idx"
    files = _batch(data, "first")
    _import(files, index, shards=3)
    catalog = load_catalog(index)
    shard = catalog.input_shards()[str(files[0].resolve())]
    name = catalog.shards[shard]["name"]
    shutil.rmtree(catalog.shard_path(shard))
    with pytest.raises(NagIndexError, match=rf"shard {name} \(.*\) is missing, but \d+ of its documents were"):
        shard_specs(index)
    # rebuilt from other data (longer ids), its reconcile not run yet
    _write(data, "a0", [*range(1000, 1060)], 3)
    monkeypatch.setattr(sharded_mod, "finish_shards", lambda catalog, **options: 0)
    _import(files, index)
    with pytest.raises(NagIndexError, match=rf"the first \d+ documents of shard {name} changed since their ids "
                                            r"were reconciled \(the shard was rebuilt\)"):
        open_index(index)
    monkeypatch.undo()
    _import(files, index)
    assert _hidden_now(index) == _hidden_from_scratch(index)
    assert load_catalog(index).dedup["generation"] == 2 and len(open_index(index)) > 0


def test_an_index_reconciled_before_generations_is_served_then_reconciled_anew(tmp_path):
    """Its catalog's dedup has rows and hidden only, its hidden files no generation: queries read them;
    the next ingest reconciles all rows (generation 1), the one after removes the old files."""
    data, index = tmp_path / "data", tmp_path / "idx"
    files = _batch(data, "first")
    _import(files, index, shards=3)
    catalog = load_catalog(index)
    hidden = _hidden_now(index)
    for s, shard in enumerate(catalog.shards):
        catalog.hidden_file(s).rename(index / f"hidden-{shard['name']}.u64")
    for path in index.glob("reconciled-*.u64"):
        path.unlink()
    catalog.dedup = {"rows": catalog.dedup["rows"], "hidden": catalog.dedup["hidden"]}
    catalog.save()
    assert [s["hidden"].tolist() for s in shard_specs(index)] == hidden and any(hidden)
    files += _batch(data, "second")
    _import(files, index)
    assert load_catalog(index).dedup["generation"] == 1 and _hidden_now(index) == _hidden_from_scratch(index)
    assert len(list(index.glob("hidden-shard-0000?.u64"))) == 3  # kept for a query that read the old catalog
    files += _batch(data, "third")
    _import(files, index)
    assert load_catalog(index).dedup["generation"] == 2 and _hidden_now(index) == _hidden_from_scratch(index)
    assert list(index.glob("hidden-shard-0000?.u64")) == []


@pytest.fixture()
def targets(tmp_path) -> list[TargetRequest]:
    (tmp_path / "targets").mkdir()
    paths = pools.write_targets(tmp_path / "targets")
    return [TargetRequest("features", str(paths[name]), weight=w) for name, w in (("alpha", 2.0), ("beta", 1.0))]


def _answers(targets: list[TargetRequest], index: Path, out: Path) -> list:
    """Three query forms' selection files (every column, every row) and the combined view's rows."""
    forms = {"paper": {"fraction": 0.3}, "union": {"k": 40, "mode": "union"}, "approx": {"k": 12, "approx": True}}
    tables = []
    for form, options in forms.items():
        query(targets, index, out=out / f"{form}.parquet", **options)
        tables.append(pq.read_table(out / f"{form}.parquet"))
    return [*tables, _rows(index)]


def test_queries_answer_from_the_last_reconcile_while_shards_append(tmp_path, targets, monkeypatch):
    """One shard appended and derived, another committed but not derived, reconcile not run: every query
    answers as before the append began; once reconciled, as a fresh one-shard index of all the inputs."""
    data, index = tmp_path / "data", tmp_path / "idx"
    first = _batch(data, "first")
    _import(first, index, shards=3)
    (tmp_path / "before").mkdir()
    before = _answers(targets, index, tmp_path / "before")
    specs = shard_specs(index)

    derives = []
    real = derived_mod.sync_derived

    def killed_at_second_derive(path, *args, **kwargs):
        derives.append(path)
        if len(derives) == 2:
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(derived_mod, "sync_derived", killed_at_second_derive)
    second = _batch(data, "second")
    with pytest.raises(KeyboardInterrupt):
        _import(second, index)
    monkeypatch.undo()
    grown = [open_shard(s["path"]) for s in specs]
    assert sum(len(v) for v in grown) > sum(s["rows"] for s in specs)  # one shard derived its new rows
    assert sum(v.pending for v in grown) > 0  # another committed some, not derived
    pending = sum(len(v) + v.pending for v in grown) - sum(s["rows"] for s in specs)
    assert f"; {pending:,} committed since, served once their ingest finishes" in describe_index(index)
    assert [(s["part"], s["rows"], s["hidden"].tolist()) for s in shard_specs(index)] == \
        [(s["part"], s["rows"], s["hidden"].tolist()) for s in specs]
    (tmp_path / "during").mkdir()
    during = _answers(targets, index, tmp_path / "during")
    assert [t.equals(u) for t, u in zip(during[:3], before[:3])] == [True] * 3 and during[3] == before[3]

    _import(second, index)  # the same command again: finishes the append and reconciles
    _import(first + second, tmp_path / "one")
    (tmp_path / "after").mkdir()
    (tmp_path / "fresh").mkdir()
    after, fresh = _answers(targets, index, tmp_path / "after"), _answers(targets, tmp_path / "one", tmp_path / "fresh")
    assert [t.equals(u) for t, u in zip(after[:3], fresh[:3])] == [True] * 3 and after[3] == fresh[3]
    assert len(after[-1]) > len(before[-1])


def _random_batches(seed: int) -> list[dict[str, list[int]]]:
    """A first ingest of 4 inputs and two appends of 2, ids drawn from 300 so that many repeat, within an
    input, across inputs and shards, and across appends."""
    rng = np.random.default_rng(seed)
    return [{f"r{k}{i}": rng.integers(0, 300, int(rng.integers(30, 90))).tolist() for i in range(n)}
            for k, n in enumerate((4, 2, 2))]


def _bucketed(monkeypatch, **options) -> None:
    """Sharded ingests reconcile with ``options`` (buckets, workers, ray_address)."""
    real = dedup.reconcile
    monkeypatch.setattr(dedup, "reconcile", lambda catalog, **kw: real(catalog, **{**kw, **options}))


def _reconciled_hashes(index: Path) -> tuple[bytes, bytes]:
    """Every bucket's hashes and ids at the catalog's state, concatenated in bucket order."""
    catalog = load_catalog(index)
    gens = catalog.dedup["buckets"]
    files = [dedup.bucket_files(index, b, len(gens), g) for b, g in enumerate(gens) if g]
    return tuple(b"".join(f[k].read_bytes() for f in files) for k in (0, 1))


def _ingest_both(tmp_path: Path, monkeypatch, seed: int, **options) -> None:
    """The same inputs into ``one`` (1 bucket, here) and ``many`` (``options``): after each ingest both
    hide the rule's rows, and the buckets hold, in order, the bytes of the single file."""
    data = tmp_path / "data"
    files: list[Path] = []
    for k, batch in enumerate(_random_batches(seed)):
        files += [_write(data, name, ids, 7 * k + i) for i, (name, ids) in enumerate(batch.items())]
        for name, run in (("one", {"buckets": 1}), ("many", options)):
            _bucketed(monkeypatch, **run)
            _import(files, tmp_path / name, shards=3)
            monkeypatch.undo()
        expected = _hidden_from_scratch(tmp_path / "one")
        assert sum(map(len, expected)) > 20 and _hidden_now(tmp_path / "one") == expected
        assert _hidden_now(tmp_path / "many") == expected, k
        assert _reconciled_hashes(tmp_path / "many") == _reconciled_hashes(tmp_path / "one"), k
        catalog = load_catalog(tmp_path / "many")  # the next reconcile builds on this one (no start over)
        views = [open_shard(path) for path in catalog.shard_paths()]
        assert dedup._reconciled_rows(catalog, catalog.shard_paths(), views) == catalog.dedup["rows"], k
    assert len(load_catalog(tmp_path / "many").dedup["buckets"]) == options["buckets"]


@pytest.mark.parametrize("options", [{"buckets": 8}, {"buckets": 64, "workers": 2}])
def test_buckets_hide_what_one_bucket_hides(tmp_path, monkeypatch, options):
    _ingest_both(tmp_path, monkeypatch, 11, **options)


@pytest.fixture(scope="module")
def private_ray():
    """A private 2-CPU Ray cluster for this module's Ray test (never one another process runs)."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield "local"
    if started:
        ray.shutdown()


def test_buckets_settled_as_ray_tasks_hide_the_same_rows(tmp_path, monkeypatch, private_ray):
    _ingest_both(tmp_path, monkeypatch, 12, buckets=16, ray_address=private_ray)


def test_an_append_rewrites_only_the_buckets_its_new_ids_fall_in(tmp_path, monkeypatch):
    data, index = tmp_path / "data", tmp_path / "idx"
    files = _batch(data, "first")
    _bucketed(monkeypatch, buckets=16)
    _import(files, index, shards=3)
    first = load_catalog(index).dedup["buckets"]
    assert len(first) == 16 and set(first) == {1}
    files.append(_write(data, "one-more", [3, 500], 5))  # a repeat of a reconciled id, and a new id
    _import(files, index)
    view = open_shard(load_catalog(index).shard_path(load_catalog(index).input_shards()[str(files[-1].resolve())]))
    touched = {int(h) >> 60 for h in dedup.docid_hashes(view, len(view) - 2)}
    gens = load_catalog(index).dedup["buckets"]
    assert {b for b, g in enumerate(gens) if g == 2} == touched and set(gens) == {1, 2}
    assert _hidden_now(index) == _hidden_from_scratch(index)
    kept = [dedup.bucket_files(index, b, 16, 1)[0].name for b in range(16) if b not in touched]
    assert all((index / name).is_file() for name in kept)  # untouched buckets keep their generation-1 files


def test_a_single_file_index_is_split_into_buckets_on_its_next_reconcile(tmp_path, monkeypatch):
    """An index of the single-file layout (its catalog with no bucket list) is read as one bucket; the
    next reconcile asking for 64 splits it (buckets with no new row too) and hashes the new rows only; the
    one after builds on the split buckets, and removes the single files."""
    data, index = tmp_path / "data", tmp_path / "idx"
    files = _batch(data, "first")
    _bucketed(monkeypatch, buckets=1)
    _import(files, index, shards=3)
    catalog = load_catalog(index)
    del catalog.dedup["buckets"]
    catalog.save()
    monkeypatch.undo()
    _bucketed(monkeypatch, buckets=64)
    starts: list[int] = []
    real = dedup.docid_hashes
    monkeypatch.setattr(dedup, "docid_hashes", lambda view, start, stop: starts.append(start) or real(view, start, stop))
    for batch in ("second", "third"):
        rows, starts[:] = load_catalog(index).dedup["rows"], []
        files += _batch(data, batch)
        _import(files, index)
        assert sorted(starts) == sorted(r for r, n in zip(rows, load_catalog(index).dedup["rows"]) if n > r), batch
        assert _hidden_now(index) == _hidden_from_scratch(index), batch
        record = load_catalog(index).dedup
        hashes = np.frombuffer(_reconciled_hashes(index)[0], "<u8")
        assert len(hashes) == sum(record["rows"]) and np.all(hashes[1:] >= hashes[:-1]), batch
    assert record["generation"] == 3 and len(record["buckets"]) == 64 and set(record["buckets"]) == {2, 3}
    assert not list(index.glob("reconciled-hashes.*.u64"))  # the single files went two generations later


def test_a_reconcile_stopped_midway_and_run_again_hides_the_same_rows(tmp_path, monkeypatch):
    """Killed after 3 of the buckets were written: the catalog and hidden rows stay as before; the next
    ingest writes the same generation over and ends where an uninterrupted run does."""
    data = tmp_path / "data"
    batches = _random_batches(13)
    first = [_write(data, name, ids, i) for i, (name, ids) in enumerate(batches[0].items())]
    second = [_write(data, name, ids, 9 + i) for i, (name, ids) in enumerate(batches[1].items())]
    _bucketed(monkeypatch, buckets=8)
    for name in ("killed", "whole"):
        _import(first, tmp_path / name, shards=3)
    _import(first + second, tmp_path / "whole")
    before = load_catalog(tmp_path / "killed").dedup, _hidden_now(tmp_path / "killed")
    merged, real = [], dedup._merge

    def killed_at_fourth_bucket(*args):
        merged.append(args[-1])
        if len(merged) == 4:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(dedup, "_merge", killed_at_fourth_bucket)
    with pytest.raises(KeyboardInterrupt):
        _import(first + second, tmp_path / "killed")
    assert (load_catalog(tmp_path / "killed").dedup, _hidden_now(tmp_path / "killed")) == before
    monkeypatch.setattr(dedup, "_merge", real)
    _import(first + second, tmp_path / "killed")
    assert _hidden_now(tmp_path / "killed") == _hidden_now(tmp_path / "whole") == _hidden_from_scratch(
        tmp_path / "whole")
    assert _reconciled_hashes(tmp_path / "killed") == _reconciled_hashes(tmp_path / "whole")
    assert not list((tmp_path / "killed").glob("dedup-new.*"))


def test_the_default_bucket_count_follows_the_pool_and_never_shrinks():
    assert [dedup._bucket_count(None, n, 1) for n in (0, 1, dedup.BUCKET_ROWS, dedup.BUCKET_ROWS + 1,
                                                     10 ** 7, 10 ** 9)] == [1, 1, 1, 2, 4, 256]
    assert dedup._bucket_count(None, 10, 16) == 16 and dedup._bucket_count(4, 10 ** 9, 8) == 8
    assert dedup._bucket_bounds(4).tolist() == [0, 1 << 62, 2 << 62, 3 << 62]
    for bad in (0, 3, 1 << 17):
        with pytest.raises(NagIndexError, match=rf"dedup buckets must be a power of two from 1 to 65536, got {bad}"):
            dedup._bucket_count(bad, 10, 1)
