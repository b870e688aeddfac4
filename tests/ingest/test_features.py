"""Reference feature files: golden round trip, validation with line numbers, resumable import."""
from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nagindex.data import Reject
from nagindex.index.sharded import open_index
from nagindex.index.store import IndexStore
from nagindex.ingest.interop import export_features, import_features, write_feature_lines, write_features
from nagindex.sources import features as features_module
from nagindex.sources.features import read_features

SETTINGS = {"num_layers": 4, "top_k": 8, "width": 256}


def reference_line(docid: str, codes_by_type: dict[str, np.ndarray]) -> str:
    """What the reference writes: json.dumps of the dict, default separators."""
    record = {"docid": docid}
    record.update({f"{t}_feature": {"layer_topk_value_index": c.reshape(-1).tolist()} for t, c in codes_by_type.items()})
    return json.dumps(record) + "\n"


def test_golden_import_export_is_byte_identical(tmp_path: Path, golden_dir: Path) -> None:
    source = golden_dir / "features_fwd_up_only" / "pool" / "pool.jsonl"
    payload = golden_dir / "data" / "pool" / "pool.parquet"
    result = import_features(source, tmp_path / "idx", **SETTINGS, neuron_type="fwd_up",
                             token_field="token_num", payload_paths=payload)
    assert result["added"] == 15 and result["rejects"] == 0
    assert export_features(tmp_path / "idx", tmp_path / "out.jsonl") == 15
    assert (tmp_path / "out.jsonl").read_bytes() == source.read_bytes()
    view = open_index(tmp_path / "idx")
    table = pq.read_table(payload)
    assert view.docids.numpy().tolist() == table["docid"].to_pylist()
    assert view.token_counts.tolist() == table["token_num"].to_pylist()
    again = import_features(source, tmp_path / "idx", **SETTINGS, token_field="token_num", payload_paths=payload)
    assert again["added"] == 0 and len(open_index(tmp_path / "idx")) == 15  # done files are skipped


def test_all_types_file_reads_any_type(golden_dir: Path) -> None:
    path = golden_dir / "features" / "pool" / "pool.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for ntype in ("fwd_up", "att_o"):
        got = list(read_features(path, ntype, **SETTINGS))
        assert [d for d, _ in got] == [r["docid"] for r in lines]
        assert all(c.tolist() == np.reshape(r[f"{ntype}_feature"]["layer_topk_value_index"], (4, 8)).tolist()
                   for (_, c), r in zip(got, lines))


def test_writer_matches_json_dumps_for_several_types(make_codes) -> None:
    rng = np.random.default_rng(5)
    up, down = make_codes(rng, 3), make_codes(rng, 3, width=64)
    ids = ["a", "ü\"quoted\"", "7"]
    fh = io.StringIO()
    write_feature_lines(fh, ids, {"fwd_up": up, "fwd_down": down})
    assert fh.getvalue() == "".join(reference_line(d, {"fwd_up": u, "fwd_down": w}) for d, u, w in zip(ids, up, down))


def test_bad_feature_lines_are_rejected_with_line_numbers(tmp_path: Path, make_codes, monkeypatch) -> None:
    monkeypatch.setattr(features_module, "_BLOCK_BYTES", 400)  # many blocks, some parsed line by line
    good = make_codes(np.random.default_rng(1), 4)
    lines = [reference_line(f"g{i}", {"fwd_up": good[i]}) for i in range(4)]
    bad = [
        '{"docid": "short", "fwd_up_feature": {"layer_topk_value_index": [1, 2, 3]}}\n',
        '{"docid": "big", "fwd_up_feature": {"layer_topk_value_index": [' + ", ".join(["300"] * 32) + "]}}\n",
        '{"docid": "cut", "fwd_up_feat\n',
        '{"docid": "nofeat"}\n',
        '{"docid": 42, "fwd_up_feature": {"layer_topk_value_index": [' + ", ".join(["1"] * 32) + "]}}\n",
    ]
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(gzip.compress("".join([lines[0], bad[0], lines[1], bad[1], bad[2], lines[2], bad[3],
                                            bad[4], lines[3]]).encode()))
    got = list(read_features(path, **SETTINGS))
    kept = [g for g in got if not isinstance(g, Reject)]
    rejects = {r.position: r for r in got if isinstance(r, Reject)}
    assert [d for d, _ in kept] == ["g0", "g1", "g2", "42", "g3"]
    assert np.array_equal(np.stack([c for _, c in kept if _.startswith("g")]), good)
    assert "3 indices, expected L*K = 32" in rejects[1].reason and rejects[1].docid == "short"
    assert "outside [0, 256)" in rejects[3].reason and rejects[3].source == str(path)
    assert "malformed JSON" in rejects[4].reason and "fwd_up_feature" in rejects[6].reason
    assert sorted(rejects) == [1, 3, 4, 6]


def test_parquet_struct_and_flat_columns(tmp_path: Path, make_codes) -> None:
    codes = make_codes(np.random.default_rng(2), 6)
    flat = pa.array(codes.reshape(6, -1).tolist(), pa.list_(pa.int32()))
    struct = pa.StructArray.from_arrays([flat], names=["layer_topk_value_index"])
    pq.write_table(pa.table({"docid": [f"p{i}" for i in range(6)], "fwd_up_feature": struct,
                             "token_num": [1, 2, None, 4, -5, 6]}), tmp_path / "s.parquet", row_group_size=4)
    pq.write_table(pa.table({"docid": list(range(6)), "fwd_up_feature": flat}), tmp_path / "t.parquet")
    got = list(read_features([tmp_path / "s.parquet", tmp_path / "t.parquet"], **SETTINGS))
    assert [d for d, _ in got] == [f"p{i}" for i in range(6)] + [str(i) for i in range(6)]
    assert np.array_equal(np.stack([c for _, c in got]), np.concatenate([codes, codes]))
    result = import_features(tmp_path / "s.parquet", tmp_path / "idx", **SETTINGS, token_field="token_num")
    assert result == {**result, "added": 4, "rejects": 2}
    with IndexStore.open(tmp_path / "idx") as store:
        reasons = {r.docid: r.reason for r in store.rejects()}
    assert reasons == {"p2": "no token count", "p4": "token field 'token_num' is not a non-negative integer"}
    assert open_index(tmp_path / "idx").token_counts.tolist() == [1, 2, 4, 6]


@pytest.mark.parametrize("die_at", [2, 5])
def test_interrupted_import_resumes_to_the_same_index(tmp_path: Path, make_codes, monkeypatch, die_at: int) -> None:
    monkeypatch.setattr(features_module, "_BLOCK_BYTES", 2000)
    codes = make_codes(np.random.default_rng(3), 40)
    ids = [f"r{i:02d}" for i in range(40)]
    files = []
    for part in range(2):
        path = tmp_path / f"f{part}.jsonl"
        write_features(path, ids[part * 20:(part + 1) * 20], codes[part * 20:(part + 1) * 20])
        files.append(path)
    payload = tmp_path / "payload.jsonl"
    payload.write_text("".join(json.dumps({"docid": d, "doc": "x", "tokens": i}) + "\n"
                               for i, d in enumerate(ids) if i != 33))
    kwargs = dict(**SETTINGS, token_field="tokens", payload_paths=payload)
    import_features(files, tmp_path / "clean", **kwargs)

    real, calls = IndexStore.append, []

    def dies_on_commit(self, *args, **kw):
        calls.append(1)
        if len(calls) == die_at:
            raise KeyboardInterrupt
        return real(self, *args, **kw)

    monkeypatch.setattr(IndexStore, "append", dies_on_commit)
    with pytest.raises(KeyboardInterrupt):
        import_features(files, tmp_path / "crashed", **kwargs)
    monkeypatch.setattr(IndexStore, "append", real)
    partial = IndexStore.open(tmp_path / "crashed")
    assert 0 < len(partial) < 39
    partial.close()
    import_features(files, tmp_path / "crashed", **kwargs)
    for name in ("clean", "crashed"):
        export_features(tmp_path / name, tmp_path / f"{name}.jsonl")
    assert (tmp_path / "clean.jsonl").read_bytes() == (tmp_path / "crashed.jsonl").read_bytes()
    with IndexStore.open(tmp_path / "crashed") as store:
        assert len(store) == 39 and [r.docid for r in store.rejects()] == ["r33"]
        assert store.total_tokens == sum(i for i in range(40) if i != 33)
        assert all(p["done"] and p["next_position"] == 20 for p in store.all_progress().values())


def test_duplicate_docids_across_files_are_rejected(tmp_path: Path, make_codes) -> None:
    codes = make_codes(np.random.default_rng(4), 3)
    write_features(tmp_path / "a.jsonl", ["x", "y", "x"], codes)
    result = import_features(tmp_path / "a.jsonl", tmp_path / "idx", **SETTINGS, token_field="n",
                             payload_paths=_payload(tmp_path, {"x": 1, "y": 2}))
    assert result["added"] == 2
    with IndexStore.open(tmp_path / "idx") as store:
        (reject,) = list(store.rejects())
    assert reject.docid == "x" and reject.position == 2 and "duplicate" in reject.reason


def _payload(tmp_path: Path, tokens: dict[str, int]) -> Path:
    path = tmp_path / "payload.parquet"
    pq.write_table(pa.table({"docid": list(tokens), "n": list(tokens.values())}), path)
    return path
