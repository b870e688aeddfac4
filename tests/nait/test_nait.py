"""NAIT fidelity: index scores against a brute-force computation from raw hooked activations, the PCA's
sign and tie rules, the same selection on 1 and 3 shards, and the index identity of ``--features``."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from nagindex.encode.dense import DenseSpec
from nagindex.encode.extract import NagExtractor
from nagindex.errors import IndexMismatchError, NagIndexError
from nagindex.ingest.run import ingest
from nagindex.query.nait import principal_directions
from nagindex.query.run import query
from tests.hooks import forward_with_hooks
from tests.nait.conftest import SETTINGS, write_corpus, write_targets


def _hooked(model, tokenizer, text: str, site: str) -> tuple[np.ndarray, np.ndarray]:
    """(L, d) first- and last-token activations of one unpadded text, from plain forward hooks."""
    grabbed = []
    layers = list(model.base_model.layers)
    modules = layers if site == "residual" else [layer.mlp.down_proj for layer in layers]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:SETTINGS["max_length"]]
    forward_with_hooks(model, modules, lambda _m, _i, out: grabbed.append(
        (out[0] if isinstance(out, tuple) else out)[0].float()), ids)
    acts = torch.stack(grabbed).numpy()  # (L, T, d)
    return acts[:, 0], acts[:, -1]


def _pc1_by_eigh(deltas: np.ndarray) -> np.ndarray:
    """Independent PC1: the top eigenvector of the scatter matrix, signed along the mean."""
    out = []
    for layer in range(deltas.shape[1]):
        x = deltas[:, layer]
        c = x - x.mean(0)
        v = np.linalg.eigh(c.T @ c)[1][:, -1]
        out.append(v if v @ x.mean(0) > 0 else -v)
    return np.stack(out)


@pytest.mark.parametrize("dtype,site,vector,layers", [
    ("float32", "residual", "last", None), ("float32", "mlp", "delta", "0,2"),
    ("bfloat16", "residual", "last", "last"), ("float16", "residual", "delta", None)])
def test_index_scores_equal_brute_force_from_hooked_activations(golden_dir, tmp_path, dtype, site, vector, layers):
    from nagindex.index.dense import DENSE_FILES, to_float32, to_stored
    from nagindex.models import load_backbone
    from nagindex.query.profile import resolve_layers

    bb = load_backbone(str(golden_dir / "model"), device="cpu", dtype=dtype)
    spec = DenseSpec(site, vector)
    texts = write_corpus(golden_dir, tmp_path / "pool.jsonl")
    examples = write_targets(golden_dir, tmp_path / "target.jsonl")
    ex = NagExtractor(bb, ("fwd_up",), batch_size=4, dense=spec, **SETTINGS)
    idx = tmp_path / "idx"
    ingest([tmp_path / "pool.jsonl"], idx, backbone=str(golden_dir / "model"), extractor=ex, nait=spec,
           dtype=dtype, **SETTINGS)
    name = {"float32": "nait.f32", "float16": "nait.f16", "bfloat16": "nait.bf16"}[dtype]
    assert (idx / name).stat().st_size == len(texts) * 4 * 64 * (4 if dtype == "float32" else 2)

    # brute force: one document at a time, no padding, hooks on the plain model
    rows = []
    for text in texts:
        first, last = _hooked(bb.model, bb.tokenizer, text, site)
        rows.append(last.astype(np.float64) - first if vector == "delta" else last)
    deltas = []
    for text in examples:
        first, last = _hooked(bb.model, bb.tokenizer, text, site)
        deltas.append(last.astype(np.float64) - first)
    directions = _pc1_by_eigh(np.stack(deltas))

    from nagindex.encode import encoder

    original = encoder.build_extractor
    encoder.build_extractor = lambda *a, **k: NagExtractor(bb, ("fwd_up",), batch_size=4, dense=k["dense"],
                                                           **SETTINGS)
    try:
        res = query({"file": str(tmp_path / "target.jsonl")}, idx, fraction=1.0, method="nait", layers=layers)
    finally:
        encoder.build_extractor = original
    # the stored rows and the cached directions are the hooked ones (batching and padding move the last bits)
    stored = to_float32(np.fromfile(idx / name, dtype=DENSE_FILES[dtype][1]).reshape(len(texts), 4, 64), dtype)
    tol = {"float32": 1e-7, "bfloat16": 4e-3, "float16": 4e-4}[dtype]  # largest seen: 3.7e-8, 1.5e-3, 1.2e-4
    np.testing.assert_allclose(stored, to_float32(to_stored(np.stack(rows), dtype), dtype), rtol=0, atol=tol)
    cached = np.load(next((idx / "targets").glob("nait-*.npy")))
    # unit directions, entries about 0.12: a wrong component or sign is off by far more (largest seen:
    # 1.1e-7, 3.5e-4, 8.1e-5)
    np.testing.assert_allclose(cached, directions, rtol=0, atol={"float32": 5e-7, "bfloat16": 2e-3,
                                                                "float16": 5e-4}[dtype])
    # the index's scores are exactly the stored rows dotted with the directions over the kept layers
    kept = resolve_layers(layers, 4)
    expected = np.einsum("nld,ld->n", stored[:, kept].astype(np.float64), cached[kept])
    got = dict(zip(res.table.column("docid").to_pylist(), res.table.column("score").to_numpy()))
    docids = [f"{d}-0" for d in pq.read_table(golden_dir / "data/pool/pool.parquet").column("docid").to_pylist()]
    np.testing.assert_allclose([got[d] for d in docids], expected, rtol=1e-12, atol=1e-15)
    order = sorted(range(len(docids)), key=lambda i: (-expected[i], docids[i]))
    assert res.table.column("docid").to_pylist() == [docids[i] for i in order]


def test_principal_direction_sign_and_tie_rules():
    along = np.array([[[3.0, 0.0]], [[1.0, 0.0]], [[-1.0, 0.0]]])  # mean +x: PC1 points to +x
    np.testing.assert_array_equal(np.abs(principal_directions(along)), [[1.0, 0.0]])
    assert principal_directions(along)[0, 0] == 1.0
    assert principal_directions(-along)[0, 0] == -1.0  # mean -x: the direction follows it
    tie = np.array([[[1.0, 1.0]], [[-1.0, 1.0]]])  # mean (0, 1) is orthogonal to PC1 (+-x): largest entry > 0
    assert principal_directions(tie)[0].tolist() == [1.0, 0.0]
    assert principal_directions(np.array([[[-1.0, 1.0]], [[1.0, 1.0]]]))[0].tolist() == [1.0, 0.0]
    one = np.array([[[0.0, -2.0]]])  # one example: its own direction
    assert principal_directions(one)[0].tolist() == [0.0, -1.0]
    with pytest.raises(NagIndexError, match="all 0"):
        principal_directions(np.zeros((3, 1, 2)))
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20, 3, 16)) + rng.normal(size=(1, 3, 16))
    assert principal_directions(x).tobytes() == principal_directions(x.copy()).tobytes()
    np.testing.assert_allclose(principal_directions(x), principal_directions(x[::-1]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("quota", [dict(k=7), dict(fraction=0.3), dict(tokens=400)])
def test_same_selection_on_one_and_three_shards(three_way, quota):
    from nagindex.index.catalog import load_catalog

    catalog = load_catalog(three_way / "three")
    sizes = [json.loads((p / "index_info.json").read_text())["rows"] for p in catalog.shard_paths()]
    assert sum(sizes) == 45 and sum(1 for s in sizes if s) >= 2  # the documents are spread over shards
    target = {"file": str(three_way / "target.jsonl")}
    one = query(target, three_way / "one", method="nait", **quota)
    three = query(target, three_way / "three", method="nait", **quota)
    assert one.table.column("docid").to_pylist() == three.table.column("docid").to_pylist()
    assert one.table.column("score").to_numpy().tobytes() == three.table.column("score").to_numpy().tobytes()
    assert len(one) > 0


def test_features_are_part_of_the_identity(golden_dir, tmp_path):
    write_corpus(golden_dir, tmp_path / "pool.jsonl")
    kw = dict(backbone=str(golden_dir / "model"), dtype="float32", **SETTINGS)
    ingest([tmp_path / "pool.jsonl"], tmp_path / "nag", **kw)
    assert not list((tmp_path / "nag").glob("nait.*"))
    manifest = json.loads((tmp_path / "nag" / "index_info.json").read_text())["manifest"]
    assert "nait" not in manifest and "nait_width" not in manifest
    with pytest.raises(IndexMismatchError, match="nait: index has None"):
        ingest([tmp_path / "pool.jsonl"], tmp_path / "nag", nait=DenseSpec(), **kw)
    ingest([tmp_path / "pool.jsonl"], tmp_path / "both", nait=DenseSpec(), **kw)
    with pytest.raises(IndexMismatchError, match="nait: index has"):
        ingest([tmp_path / "pool.jsonl"], tmp_path / "both", **kw)
    with pytest.raises(IndexMismatchError, match="'vector': 'delta'"):
        ingest([tmp_path / "pool.jsonl"], tmp_path / "both", nait=DenseSpec(vector="delta"), **kw)
    with pytest.raises(NagIndexError, match="no NAIT features"):
        query({"file": str(tmp_path / "pool.jsonl")}, tmp_path / "nag", k=3, method="nait")


def test_rows_of_a_window_killed_before_its_commit_are_cut(golden_dir, tmp_path):
    """A window's dense rows are written before its commit: a crash between the two leaves bytes past
    the store's rows, cut off by the next ingest, whose rows then line up with the store's."""
    texts = write_corpus(golden_dir, tmp_path / "pool.jsonl")
    # windows of 5 in both runs: the same batches, so the same bits (batching moves the last bits)
    kw = dict(backbone=str(golden_dir / "model"), dtype="float32", nait=DenseSpec(), commit_every=5, **SETTINGS)
    ingest([tmp_path / "pool.jsonl"], tmp_path / "idx", limit=5, **kw)
    path = tmp_path / "idx" / "nait.f32"
    row = 4 * 64 * 4
    clean = path.read_bytes()
    assert len(clean) == 5 * row
    with open(path, "ab") as fh:
        fh.write(b"\x7f" * (3 * row))  # rows of an uncommitted window
    ingest([tmp_path / "pool.jsonl"], tmp_path / "idx", **kw)
    ingest([tmp_path / "pool.jsonl"], tmp_path / "whole", **kw)
    resumed = path.read_bytes()
    assert len(resumed) == len(texts) * row and resumed[:len(clean)] == clean
    # the rows after the cut are the documents' (an uninterrupted run's), not the uncommitted bytes
    np.testing.assert_allclose(np.frombuffer(resumed, "<f4"), np.fromfile(tmp_path / "whole" / "nait.f32", "<f4"),
                               rtol=0, atol=1e-6)


def test_query_options_nait_cannot_honour_are_refused(tmp_path):
    for option in (dict(approx=True), dict(power=2.0), dict(weighting="idf")):
        with pytest.raises(NagIndexError, match="--method nag only"):
            query("arc_challenge", tmp_path, k=1, method="nait", **option)
    with pytest.raises(NagIndexError, match="choose one of nag, nait"):
        query("arc_challenge", tmp_path, k=1, method="nai")


def test_score_export_mixture_and_ray_agree_with_the_query(three_way, golden_dir, tmp_path):
    """``score`` writes the query's NAIT scores for every document; a paper mixture of NAIT targets and a
    query on Ray actors (one per shard) select what the in-process query selects."""
    from nagindex.query.export import score_all

    target = {"file": str(three_way / "target.jsonl")}
    full = query(target, three_way / "one", fraction=1.0, method="nait")
    score_all(target, three_way / "three", out=tmp_path / "s.parquet", method="nait")
    written = pq.read_table(tmp_path / "s.parquet").to_pydict()
    assert dict(zip(written["docid"], written["score_target"])) == dict(
        zip(full.table.column("docid").to_pylist(), full.table.column("score").to_pylist()))
    sci = {"file": str(golden_dir / "data/target/target.parquet"), "filter": {"dataset": "sci_target"}, "weight": 3}
    mixed = [query([target, sci], root, k=12, method="nait", mode="paper", dedup=True)
             for root in (three_way / "one", three_way / "three")]
    assert mixed[0].table.column("docid").to_pylist() == mixed[1].table.column("docid").to_pylist()
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = query(target, three_way / "three", k=9, method="nait", ray_address="local")
    finally:
        ray.shutdown()
    assert on_ray.table.equals(query(target, three_way / "one", k=9, method="nait").table)


def test_projected_index_scores_are_projected_rows_and_directions(golden_dir, tmp_path):
    """``--nait-dims``: the index keeps A_l R_l, the target's directions are found in the full width and
    projected with the same seeded R_l, and the scores are their dot products."""
    from nagindex.encode.dense import project
    from nagindex.models import load_backbone

    bb = load_backbone(str(golden_dir / "model"), device="cpu", dtype="float32")
    spec = DenseSpec(dims=16, seed=3)
    texts = write_corpus(golden_dir, tmp_path / "pool.jsonl")
    examples = write_targets(golden_dir, tmp_path / "target.jsonl")
    kw = dict(backbone=str(golden_dir / "model"), dtype="float32", batch_size=1, **SETTINGS)
    ingest([tmp_path / "pool.jsonl"], tmp_path / "idx", nait=spec, **kw)
    manifest = json.loads((tmp_path / "idx" / "index_info.json").read_text())["manifest"]
    assert manifest["nait"] == {"site": "residual", "vector": "last", "dims": 16, "seed": 3}
    assert manifest["nait_width"] == 16
    stored = np.fromfile(tmp_path / "idx" / "nait.f32", "<f4").reshape(len(texts), 4, 16)
    full = np.stack([_hooked(bb.model, bb.tokenizer, t, "residual")[1] for t in texts])
    np.testing.assert_allclose(stored, project(full, spec), rtol=0, atol=2e-6)
    assert not np.allclose(stored, project(full, DenseSpec(dims=16, seed=4)), atol=1e-2)  # the seed matters
    res = query({"file": str(tmp_path / "target.jsonl")}, tmp_path / "idx", fraction=1.0, method="nait")
    cached = np.load(next((tmp_path / "idx" / "targets").glob("nait-*.npy")))
    deltas = np.stack([np.subtract(*_hooked(bb.model, bb.tokenizer, t, "residual")[::-1], dtype=np.float64)
                       for t in examples])
    np.testing.assert_allclose(cached, project(_pc1_by_eigh(deltas), spec), rtol=0, atol=2e-6)
    expected = np.einsum("nld,ld->n", stored.astype(np.float64), cached)
    got = dict(zip(res.table.column("docid").to_pylist(), res.table.column("score").to_numpy()))
    docids = [f"{d}-0" for d in pq.read_table(golden_dir / "data/pool/pool.parquet").column("docid").to_pylist()]
    np.testing.assert_allclose([got[d] for d in docids], expected, rtol=1e-12, atol=1e-15)
    with pytest.raises(IndexMismatchError, match="'dims': 16"):
        ingest([tmp_path / "pool.jsonl"], tmp_path / "idx", nait=DenseSpec(), **kw)


def test_targets_show_prints_the_cached_directions(three_way, golden_dir, monkeypatch):
    """``targets show NAME --method nait``: per layer, the largest coordinates of the directions a query uses."""
    from click.testing import CliRunner

    from nagindex.cli import main
    from nagindex.query import target
    from nagindex.query.target import TargetSet

    examples = pq.read_table(golden_dir / "data/target/target.parquet").column("doc").to_pylist()
    monkeypatch.setattr(target, "load_target", lambda name, *a, **k: TargetSet(
        name, examples, [str(i) for i in range(len(examples))], "golden", "test"))
    out = CliRunner().invoke(main, ["targets", "show", "golden", "--method", "nait", "--index",
                                    str(three_way / "one")])
    assert out.exit_code == 0, out.output
    from nagindex.query.nait import directions_key

    manifest = json.loads((three_way / "one" / "index_info.json").read_text())["manifest"]
    cached = np.load(three_way / "one" / "targets" / f"nait-{directions_key(examples, manifest)}.npy")
    lines = [line for line in out.output.splitlines() if line.startswith(("golden:", "layer"))]  # not progress
    assert lines[0].startswith("golden: NAIT directions of 6 examples from golden") and len(lines) == 5
    for layer, line in enumerate(lines[1:]):
        big = np.argsort(-np.abs(cached[layer]), kind="stable")[:5]
        assert line.startswith(f"layer {layer:>3}: {int(big[0])}:{cached[layer][big[0]]:+.3f}, ")
