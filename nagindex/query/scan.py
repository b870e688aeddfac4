"""One shard's side of an exact query: score its codes once, then answer the coordinator's rounds.

A ``ShardScan`` streams its shard's memory-mapped codes block by block through a
scorer (``score.BlockScorer`` on CPU, ``score_torch.TorchScorer`` on a GPU) and
writes each document's sums to a scratch file (``(P, n)``: 4 bytes per document and
target for exact integer sums, 8 for float ones), so the rounds after the scan read
4-8 bytes per document instead of the L x K x 2 bytes of its codes. The scratch is a
file-backed memory map in a temporary folder: page cache, not anonymous memory.

The coordinator (``query/rank.py``) then asks, per target:

1. ``score``: eligible documents, their tokens and the range of their ranking keys;
2. ``combine`` (quality only): the combined keys, once the global min/max are known;
3. ``histogram``: document count and token sum per key bin (``Binning``);
4. ``candidates``: every row in a bin below the threshold bin, plus the threshold
   bin's rows in ranking order, cut as soon as they can no longer be selected
   (``Need``);
5. ``fetch``: the output columns of the selected rows.

Every answer is computed block by block: a shard holds one block, its scratch map and
the rows it returns, whatever its size and however long its docids. Ranking keys
ascend (lower is better): ``-raw`` for exact sums, the NAG distance ``1 - similarity``
for float sums, the quality-combined score with a quality file. A document that takes
no part (hidden as a later copy of an id, no quality value, not an ``--approx``
candidate) is marked in the scratch (-1 / NaN) and never counted.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError

logger = logging.getLogger(__name__)

#: rows of codes per scorer call: 64K x 28 x 20 uint16 is 72 MB, streamed from the page cache
CODE_BLOCK = 65536
#: rows per pass over the scratch sums (4-8 bytes a row and target)
SCRATCH_BLOCK = 1 << 20
#: bins of a key histogram; the threshold bin's rows are ordered exactly, so this only sets their number
MAX_BINS = 1 << 18
#: Hamming distances of 4096-bit fingerprints: 0..4096
HAMMING_BINS = 4097


@dataclass(frozen=True)
class QualitySpec:
    """``--quality-file``: a quality value per docid, combined with the NAG distance (spec sec. 4)."""

    path: str
    column: str
    id_field: str = "docid"
    higher_is_better: bool = False


@dataclass(frozen=True)
class ScorePlan:
    """What every shard scores: P count profiles over the kept layers, and who takes part.

    ``approx``: query fingerprints ``(P, 512)`` and a Hamming radius each: only the
    documents within the radius of any of them are scored (``--approx``). ``weights``:
    ``(P, L', width)`` float64 weights of a ``--weighting`` (``weighting.py``), summed
    instead of the counts; computed once by the coordinator, so every shard has the same bits.
    """

    profiles: np.ndarray  # (P, L', width) integer counts
    layers: tuple[int, ...]
    power: float = 1.0
    device: str = "cpu"
    approx: tuple[np.ndarray, np.ndarray] | None = None
    quality: QualitySpec | None = None
    sample: tuple[float, int] | None = None  # (temperature, seed): Gumbel-top-k (``sample.py``)
    groups: GroupSpec | None = None  # candidates carry each row's group (group caps)
    clusters: bool = False  # candidates carry each row's near-duplicate cluster (``--one-per-cluster``)
    weights: np.ndarray | None = None
    nait: np.ndarray | None = None  # (P, L', d) float64 NAIT directions: dense rows scored instead (query/nait.py)


@dataclass(frozen=True)
class GroupSpec:
    """``--group-by``: ``source`` (the input file), ``docid-prefix`` (the docid before its last ``-``), or a
    column of ``file`` joined on ``id_field`` (documents without a value form the group ``(none)``)."""

    by: str
    file: str | None = None
    id_field: str = "docid"


@dataclass(frozen=True)
class Binning:
    """A monotone map of ranking keys to ``bins`` histogram bins, the same on every shard.

    Exact (integer) keys: ``(key - lo) >> shift``; float keys: ``floor((key - lo) * scale)``,
    capped at the last bin. Equal keys share a bin and a lower key never gets a later bin,
    so "every row in an earlier bin ranks before every row of this one" holds exactly.
    """

    lo: float
    bins: int
    exact: bool
    shift: int = 0
    scale: float = 0.0

    @classmethod
    def over(cls, lo: float, hi: float, exact: bool) -> Binning:
        if exact:
            span = int(hi) - int(lo)
            shift = max(0, span.bit_length() - (MAX_BINS.bit_length() - 1))
            return cls(lo=int(lo), bins=(span >> shift) + 1, exact=True, shift=shift)
        if not hi > lo:
            return cls(lo=float(lo), bins=1, exact=False)
        return cls(lo=float(lo), bins=MAX_BINS, exact=False, scale=MAX_BINS / (float(hi) - float(lo)))

    @property
    def width(self) -> float:
        """The key span of one bin."""
        if self.exact:
            return float(1 << self.shift)
        return 1.0 / self.scale if self.scale else 0.0

    def of(self, keys: np.ndarray) -> np.ndarray:
        if self.exact:
            return (keys - np.int64(self.lo)) >> np.int64(self.shift)
        if self.bins == 1:
            return np.zeros(len(keys), dtype=np.int64)
        return np.minimum(((keys - self.lo) * self.scale).astype(np.int64), self.bins - 1)


@dataclass(frozen=True)
class Need:
    """How much of the threshold bin a shard must return: its first ``rows`` rows in ranking order,
    or its rows until their tokens pass ``tokens`` (the row that passes it included)."""

    rows: int | None = None
    tokens: int | None = None

    def cut(self, table: Any) -> Any:
        """The rows of ``table`` (already in ranking order) that can still be selected."""
        if self.rows is not None:
            return table.slice(0, self.rows)
        spent = np.cumsum(table.column("tokens").to_numpy())
        return table.slice(0, int(np.searchsorted(spent, self.tokens, side="right")) + 1)


def readonly(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a ``ShardScan`` step that changes nothing a later step reads. Every other step is part of
    a query's state: a lost shard actor is rebuilt by replaying those (``fleet.RayFleet``), so a new
    step is replayed unless it says it need not be."""
    method.readonly = True  # type: ignore[attr-defined]
    return method


def is_readonly(step: str) -> bool:
    """Whether ``ShardScan.<step>`` leaves the query's state as it was (``readonly``)."""
    return getattr(getattr(ShardScan, step), "readonly", False)


def rank_table(table: Any) -> Any:
    """``table`` (columns key, docid, ...) sorted by ``(key, docid)``; docids compare as UTF-8 bytes,
    which is Python's ``str`` order."""
    import pyarrow.compute as pc

    if table.num_rows < 2:
        return table
    return table.take(pc.sort_indices(table, sort_keys=[("key", "ascending"), ("docid", "ascending")]))


class ShardScan:
    """The query side of one store folder: its derived snapshot minus the rows ``hidden`` elsewhere."""

    def __init__(self, path: str | os.PathLike, hidden: np.ndarray | None = None, part: int = 0,
                 rows: int | None = None, view: Any = None) -> None:
        from nagindex.index.derived import open_shard

        self.path, self.part = Path(path), part
        #: ``rows``: only the shard's first rows take part (its last reconciled state while it appends);
        #: ``view``: an already open snapshot, shared by the sessions of one actor
        self.view = view if view is not None else open_shard(path, rows=rows)
        self.hidden = np.zeros(0, np.int64) if hidden is None else np.asarray(hidden, np.int64)
        self._dir: Path | None = None
        self._sums: np.ndarray | None = None  # (P, n) int32 raw sums, or float64 similarities
        self._combined: np.ndarray | None = None  # (P, n) float64 quality-combined keys
        self._sampled: np.ndarray | None = None  # (P, n) float64 Gumbel-perturbed keys (--sample)
        self._quality: np.ndarray | None = None  # (n,) float64
        self.plan: ScorePlan | None = None
        self._norm = np.zeros(0)
        self._exact = True
        self._group_of: np.ndarray | None = None  # (n,) int32 index into _group_names (--group-by COLUMN)
        self._chosen: dict[int, tuple[Binning, int, np.ndarray]] = {}  # a selection written by the shards
        self._checked: np.ndarray | None = None  # rows whose texts decontamination has read
        self._sorted: dict[int, Any] = {}  # per target, the chosen rows (row, key, docid) in ranking order
        self._writer: Any = None  # the part being written: (path, its partial file, ParquetWriter or None)
        self._group_names: Any = None

    def __len__(self) -> int:
        return len(self.view)

    @readonly
    def describe(self) -> dict[str, Any]:
        """The shard's manifest and its visible rows (hidden ones left out), before any scoring."""
        return {"manifest": self.view.manifest, "visible_rows": len(self.view) - len(self.hidden)}

    @readonly
    def neuron_counts(self) -> np.ndarray:
        """Per layer, how many of the shard's visible documents hold each neuron, int64 ``(L, width)``
        (``index/neuron_stats.py``): summed over shards, the pool statistics of ``--weighting``."""
        from nagindex.index.neuron_stats import view_neuron_counts

        return view_neuron_counts(self.view, self.hidden)

    # ------------------------------------------------------------ round 0 (--approx)
    @readonly
    def hamming_histogram(self, queries: np.ndarray) -> np.ndarray:
        """``(Q, 4097)`` counts of visible documents per Hamming distance to each query fingerprint."""
        hist = np.zeros((len(queries), HAMMING_BINS), dtype=np.int64)
        for lo, hi, visible in self._blocks(CODE_BLOCK):
            dist = self._hamming(lo, hi, queries)
            for q in range(len(queries)):
                hist[q] += np.bincount(dist[q][visible], minlength=HAMMING_BINS)
        return hist

    def _hamming(self, lo: int, hi: int, queries: np.ndarray) -> np.ndarray:
        fp = np.ascontiguousarray(self.view.faiss_index().codes[lo:hi]).view("<u8")
        q = np.ascontiguousarray(queries, dtype=np.uint8).view("<u8")
        return np.stack([np.bitwise_count(fp ^ q[i]).sum(axis=1, dtype=np.int64) for i in range(len(q))])

    # ------------------------------------------------------------ round 1
    def score(self, plan: ScorePlan) -> dict[str, Any]:
        """Scan the codes once into the scratch sums; return ``stats()``."""
        from nagindex.query.score_torch import make_scorer

        self.close()
        self.plan = plan
        manifest = self.view.manifest
        shape = (len(self.view), manifest["num_layers"], manifest["top_k"])
        if plan.nait is not None:
            from nagindex.query.nait import NaitScorer

            scorer = NaitScorer(self.path, manifest, len(self.view), plan.nait, plan.layers)
        else:
            scorer = make_scorer(shape, plan.profiles, np.asarray(plan.layers), plan.power, plan.device, plan.weights)
        self._norm, self._exact = scorer.norm, scorer.exact
        n, p = len(self.view), scorer.num_profiles
        wide = len(plan.layers) * shape[2] * int(np.max(plan.profiles, initial=0)) >= 2**31
        self._sums = self._scratch("sums", (p, n), (np.int64 if wide else np.int32) if self._exact else np.float64)
        self._align_side_files(plan)
        codes = self.view.codes if plan.nait is None else scorer.rows
        for lo, hi, take in self._blocks(CODE_BLOCK):
            if plan.approx is not None:
                queries, radius = plan.approx
                take &= (self._hamming(lo, hi, queries) <= np.asarray(radius)[:, None]).any(axis=0)
            if self._quality is not None:
                take &= ~np.isnan(self._quality[lo:hi])
            out = self._sums[:, lo:hi]
            out[:] = -1 if self._exact else np.nan
            if take.all():
                sums = scorer.sums(codes[lo:hi], lo)
            else:
                where = np.flatnonzero(take)
                sums = scorer.sums(np.asarray(codes[lo + where]), lo) if len(where) else None
            if sums is None:
                continue
            values = sums.T if self._exact else sums.T / self._norm[:, None]
            if take.all():
                out[:] = values
            else:
                out[:, where] = values
        return self.stats()

    def _align_side_files(self, plan: ScorePlan) -> None:
        """The quality file's value (NaN where it has none) and the group file's group (``(none)``) of every
        row, aligned once per query (``sidefile.py``: one streamed read of each file, time and memory of the
        shard's rows), kept in the scratch: 8 bytes a row for quality, 4 for a group's dictionary index."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from nagindex.query.sidefile import DocidLookup, keyed_batches

        column = plan.groups is not None and plan.groups.by not in ("source", "docid-prefix")
        if plan.quality is None and not column:
            return
        lookup, n = DocidLookup(self.view.docids.arrow()), len(self.view)
        if plan.quality is not None:
            spec = plan.quality
            values = lookup.align(keyed_batches(Path(spec.path), spec.id_field, spec.column, True), True)
            self._quality = self._scratch("quality", (n,), np.float64)
            self._quality[:] = pc.fill_null(values, np.nan).to_numpy(zero_copy_only=False)
        if column:
            spec = plan.groups
            values = lookup.align(keyed_batches(Path(spec.file), spec.id_field, spec.by, False), False)
            groups = pc.fill_null(values, "(none)").dictionary_encode()
            self._group_of = self._scratch("groups", (n,), np.int32)
            self._group_of[:] = groups.indices.to_numpy(zero_copy_only=False)
            self._group_names = pa.array(groups.dictionary, pa.string())

    @readonly
    def stats(self) -> dict[str, Any]:
        """Visible rows and tokens; per target, eligible rows and tokens and the key range
        (and, before ``combine``, the distance and quality ranges a quality file needs)."""
        visible_rows, visible_tokens = 0, 0
        p = len(self._sums)
        rows, tokens = 0, 0
        key_lo, key_hi = np.full(p, np.inf), np.full(p, -np.inf)
        dist_lo, dist_hi = np.full(p, np.inf), np.full(p, -np.inf)
        q_lo, q_hi = np.inf, -np.inf
        tok = self.view.token_counts
        for lo, hi, visible in self._blocks(SCRATCH_BLOCK):
            visible_rows += int(visible.sum())
            visible_tokens += int(np.asarray(tok[lo:hi])[visible].sum())
            ok = self._eligible(lo, hi)
            if not ok.any():
                continue
            rows += int(ok.sum())
            tokens += int(np.asarray(tok[lo:hi])[ok].sum())
            for t in range(p):
                key = self.keys(t, lo, hi)[ok]
                key_lo[t], key_hi[t] = min(key_lo[t], key.min()), max(key_hi[t], key.max())
                if self._quality is not None and self._combined is None:
                    dist = self.distance(t, lo, hi)[ok]
                    dist_lo[t], dist_hi[t] = min(dist_lo[t], dist.min()), max(dist_hi[t], dist.max())
            if self._quality is not None:
                q = self._quality[lo:hi][ok]
                q_lo, q_hi = min(q_lo, float(q.min())), max(q_hi, float(q.max()))
        return {"visible_rows": visible_rows, "visible_tokens": visible_tokens, "rows": rows, "tokens": tokens,
                "exact": self._keys_exact, "key_lo": key_lo, "key_hi": key_hi,
                "dist_lo": dist_lo, "dist_hi": dist_hi, "q_lo": q_lo, "q_hi": q_hi}

    # ------------------------------------------------------------ round 2 (quality)
    def combine(self, dist_range: np.ndarray, q_range: tuple[float, float]) -> dict[str, Any]:
        """Quality-combined keys from the global ranges (spec sec. 4): min-max distance + min-max quality,
        inverted when higher quality is better. ``dist_range`` is ``(P, 2)``."""
        spec = self.plan.quality
        p, n = self._sums.shape
        self._combined = self._scratch("combined", (p, n), np.float64)
        for lo, hi, _ in self._blocks(SCRATCH_BLOCK):
            q = _minmax(self._quality[lo:hi], *q_range)
            q = 1.0 - q if spec.higher_is_better else q
            for t in range(p):
                self._combined[t, lo:hi] = _minmax(self.distance(t, lo, hi), *dist_range[t]) + q
        return self.stats()

    def sample(self, means: np.ndarray, sds: np.ndarray, temperature: float, seed: int) -> dict[str, Any]:
        """``--sample``: keys ``-(z / T + g)``, ``z`` the score standardised with the pool's ``means``/``sds``
        (from the key histograms), ``g`` a Gumbel draw hashed from (seed, target, docid) (``sample.py``)."""
        from nagindex.query.sample import gumbel_noise

        p, n = self._sums.shape
        sampled = self._scratch("sampled", (p, n), np.float64)
        for lo, hi, _ in self._blocks(SCRATCH_BLOCK):
            ids = self.view.docids.arrow().slice(lo, hi - lo)
            for t in range(p):
                z = (means[t] - self.keys(t, lo, hi)) / sds[t] if sds[t] > 0 else np.zeros(hi - lo)
                sampled[t, lo:hi] = -(z / temperature + gumbel_noise(ids, seed, t))
        self._sampled = sampled
        return self.stats()

    # ------------------------------------------------------------ round 3
    @readonly
    def histogram(self, binnings: list[Binning | None]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per target with a binning: eligible rows and their tokens per bin (int64 each)."""
        out = [None if b is None else (np.zeros(b.bins, np.int64), np.zeros(b.bins, np.int64)) for b in binnings]
        tok = self.view.token_counts
        for lo, hi, _ in self._blocks(SCRATCH_BLOCK):
            ok = self._eligible(lo, hi)
            tokens = np.asarray(tok[lo:hi])[ok].astype(np.float64)
            for t, b in enumerate(binnings):
                if b is None:
                    continue
                bins = b.of(self.keys(t, lo, hi)[ok])
                out[t][0][:] += np.bincount(bins, minlength=b.bins)
                out[t][1][:] += np.bincount(bins, weights=tokens, minlength=b.bins).astype(np.int64)
        return out

    # ------------------------------------------------------------ round 4
    @readonly
    def candidates(self, target: int, binning: Binning, cut: int, need: Need | None, edge_only: bool = False) -> Any:
        """Arrow table (part, row, key, tokens, docid): every eligible row in a bin before ``cut`` (unless
        ``edge_only``), and the rows of bin ``cut`` in ranking order, as far as ``need`` reaches (all of them
        without ``need``)."""
        import pyarrow as pa

        before, edge = [], []
        kept = 0
        tok = self.view.token_counts
        for lo, hi, _ in self._blocks(SCRATCH_BLOCK):
            ok = np.flatnonzero(self._eligible(lo, hi))
            key = self.keys(t=target, lo=lo, hi=hi)[ok]
            bins = binning.of(key)
            for chosen, into in ((bins < cut, before), (bins == cut, edge)):
                if edge_only and into is before:
                    continue
                rows = ok[chosen]
                if len(rows):
                    into.append(self._table(rows + lo, key[chosen], np.asarray(tok[lo:hi])[rows]))
            if need is not None and edge and sum(t.num_rows for t in edge) > 2 * max(kept, 1 << 16):
                edge = [need.cut(rank_table(pa.concat_tables(edge)))]  # keep the threshold bin's rows bounded
                kept = edge[0].num_rows
        tables = before
        if edge:
            ranked = rank_table(pa.concat_tables(edge))
            tables = [*before, ranked if need is None else need.cut(ranked)]
        return pa.concat_tables(tables) if tables else self._table(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))

    # ------------------------------------------------------------ selections written by the shards (parts.py)
    def choose(self, target: int, binning: Binning, cut: int, edge: np.ndarray) -> None:
        """Target ``target`` takes every eligible row in a bin before ``cut`` and, of bin ``cut``, ``edge``."""
        self._chosen[target] = (binning, cut, np.sort(np.asarray(edge, np.int64)))

    def _chosen_rows(self, lo: int, hi: int, targets: Any) -> np.ndarray:
        """Rows ``lo:hi`` that any of ``targets`` chose (``choose``), eligible still, as a boolean mask."""
        ok = self._eligible(lo, hi)
        mask = np.zeros(hi - lo, dtype=bool)
        where = np.flatnonzero(ok)
        for t in targets:
            binning, cut, edge = self._chosen[t]
            if len(where):  # (an empty pool has no binning)
                mask[where[binning.of(self.keys(t, lo, hi)[where]) < cut]] = True
            a, b = np.searchsorted(edge, [lo, hi])
            mask[edge[a:b] - lo] = True
        return mask & ok

    def check_chosen(self, benchmarks: Any) -> list[tuple[int, str, int, str]]:
        """Decontaminate the chosen rows whose texts were not read before (``contamination``): the ones that
        match are taken out of the query (``exclude``) and returned."""
        if self._checked is None:
            self._checked = self._scratch("checked", (len(self.view),), np.bool_)
        new = []
        for lo, hi, _ in self._blocks(SCRATCH_BLOCK):
            rows = np.flatnonzero(self._chosen_rows(lo, hi, self._chosen) & ~self._checked[lo:hi]) + lo
            self._checked[rows] = True
            new.append(rows)
        found = self.contamination(np.concatenate(new), benchmarks)
        if found:
            self.exclude(np.array([row for row, *_ in found], np.int64))
        return found

    def sort_chosen(self, target: int) -> int:
        """Put target ``target``'s chosen rows in ranking order (key, docid); returns how many there are."""
        import pyarrow as pa

        tables = []
        for lo, hi, _ in self._blocks(SCRATCH_BLOCK):
            rows = np.flatnonzero(self._chosen_rows(lo, hi, [target]))
            tables.append(self._table(rows + lo, self.keys(target, lo, hi)[rows], np.zeros(len(rows))))
        ranked = rank_table(pa.concat_tables(tables)) if tables else self._table(*(np.zeros(0),) * 3)
        ranked = ranked.select(["row", "key", "docid"])
        path = self._scratch_dir() / f"sorted-{target}.arrow"  # held in the page cache, not this process's memory
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, ranked.schema) as writer:
            writer.write_table(ranked, max_chunksize=1 << 16)
        self._sorted[target] = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        return ranked.num_rows

    @readonly
    def chosen_keys(self, target: int, start: int, n: int) -> Any:
        """Rows ``start:start + n`` of target ``target``'s chosen rows in ranking order: Arrow (key, docid)."""
        return self._sorted[target].select(["key", "docid"]).slice(start, n)

    def write_chosen(self, target: int, start: int, ranks: np.ndarray, out: str, names: list[str],
                     with_text: bool, quality: bool) -> None:
        """Append target ``target``'s chosen rows ``start:start + len(ranks)``, with their global ``ranks``, to
        this shard's part ``out`` (written to ``out.partial`` until ``finish_part``)."""
        import pyarrow.parquet as pq

        from nagindex.query.columns import selection_table

        if self._writer is None:
            self._writer = [out, f"{out}.partial", None, np.zeros(len(names), np.int64)]
        if not len(ranks):
            return
        rows = self._sorted[target].column("row").slice(start, len(ranks)).to_numpy()
        table = selection_table([self.fetch(rows, with_text)], np.arange(len(rows)), ranks,
                                np.full(len(rows), target), names, with_text, quality)
        if self._writer[2] is None:
            self._writer[2] = pq.ParquetWriter(self._writer[1], table.schema)
        self._writer[2].write_table(table)
        self._writer[3][target] += int(table.column("token_count").to_numpy().sum())

    def finish_part(self) -> np.ndarray | None:
        """Close the part ``write_chosen`` wrote and put it in place (atomically); the tokens it holds per
        target, None when it holds no row (no file)."""
        writer, self._writer = self._writer, None
        if writer is None or writer[2] is None:
            return None
        writer[2].close()
        os.replace(writer[1], writer[0])
        return writer[3]

    def _table(self, rows: np.ndarray, key: np.ndarray, tokens: np.ndarray) -> Any:
        import pyarrow as pa

        from nagindex.arrays import numeric_array

        docids = self.view.docids.arrow().take(numeric_array(rows.astype(np.int64))) if len(rows) else \
            pa.array([], pa.large_string())
        table = pa.table({"part": pa.array(np.full(len(rows), self.part, np.int32)),
                          "row": numeric_array(rows.astype(np.int64)),
                          "key": numeric_array(key.astype(np.int64 if self._keys_exact else np.float64)),
                          "tokens": numeric_array(np.asarray(tokens, dtype=np.int64)), "docid": docids})
        plan = self.plan
        if plan is not None and plan.groups is not None:
            table = table.append_column("group", self._groups(rows, docids))
        if plan is not None and plan.clusters:
            from nagindex.index.clusters import cluster_keys

            table = table.append_column("cluster", numeric_array(cluster_keys(self.path, self.part, rows, len(self.view))))
        return table

    def _groups(self, rows: np.ndarray, docids: Any) -> Any:
        """The group of each of ``rows`` (``GroupSpec``), as Arrow strings."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from nagindex.arrays import numeric_array

        by = self.plan.groups.by
        if by == "source":
            ids = np.asarray(self.view.source_ids[np.asarray(rows, np.int64)], dtype=np.int64)
            return pa.array(self.view.sources, pa.string()).take(numeric_array(ids))
        if by == "docid-prefix":
            return pc.cast(pc.replace_substring_regex(docids, pattern="-[^-]*$", replacement=""), pa.string())
        return self._group_names.take(numeric_array(np.asarray(self._group_of[np.asarray(rows, np.int64)], np.int64)))

    # ------------------------------------------------------------ round 5
    @readonly
    def fetch(self, rows: np.ndarray, with_text: bool = False) -> dict[str, Any]:
        """The output columns of ``rows`` (in the given order): ``docid`` (Arrow strings), ``source_id`` into
        ``sources``, ``similarity`` and ``combined`` per target ``(P, m)``, ``token_count``, ``position`` and,
        ``with_text``, ``text`` read back from the sources. No Python object per row but the texts."""
        from nagindex.arrays import numeric_array

        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")  # read the maps in row order, answer in the given order
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        ordered = rows[order]
        view = self.view
        source_ids = np.asarray(view.source_ids[ordered])[back].astype(np.int64)
        positions = np.asarray(view.positions[ordered])[back]
        out = {"docid": view.docids.arrow().take(numeric_array(rows)), "source_id": source_ids,
               "sources": list(view.sources),
               "similarity": self.similarity(ordered)[:, back],
               "combined": None if self._combined is None else np.asarray(self._combined[:, ordered])[:, back],
               "token_count": np.asarray(view.token_counts[ordered])[back], "position": positions}
        if with_text:
            from nagindex.sources.fetch import fetch_texts, text_options

            out["text"] = fetch_texts([view.sources[i] for i in source_ids], positions, out["docid"].to_pylist(),
                                      **text_options(view.manifest), states=self._source_states())
        return out

    @readonly
    def export(self, names: list[str]) -> Any:
        """Every visible row's ``docid``, ``token_count`` and ``score_<name>`` per target (the similarity), as
        Arrow record batches of ``SCRATCH_BLOCK`` rows, in row order (``nagindex score``)."""
        import pyarrow as pa

        from nagindex.arrays import numeric_array

        for lo, hi, visible in self._blocks(SCRATCH_BLOCK):
            rows = np.flatnonzero(visible) + lo
            if not len(rows):
                continue
            sims = self.similarity(rows)
            columns = {"docid": self.view.docids.arrow().take(numeric_array(rows)),
                       "token_count": numeric_array(np.asarray(self.view.token_counts[rows], dtype=np.int64))}
            columns.update({f"score_{name}": numeric_array(sims[t]) for t, name in enumerate(names)})
            yield pa.RecordBatch.from_pydict(columns)

    def exclude(self, rows: np.ndarray) -> None:
        """Take ``rows`` out of this query (decontamination): they count nowhere from now on."""
        self._sums[:, np.sort(np.asarray(rows, np.int64))] = -1 if self._exact else np.nan

    @readonly
    def contamination(self, rows: np.ndarray, benchmarks: Any) -> list[tuple[int, str, int, str]]:
        """``(row, docid, example index, the shared words)`` for each of ``rows`` whose text shares a run of
        words with a benchmark example (``decontam.Benchmarks``); texts read back as ``fetch`` reads them."""
        if not len(rows):
            return []
        got = self.fetch(rows, with_text=True)
        found = []
        for row, docid, text in zip(np.asarray(rows).tolist(), got["docid"].to_pylist(), got["text"]):
            hit = benchmarks.match(text)
            if hit is not None:
                found.append((row, docid, *hit))
        return found

    def _source_states(self) -> dict[str, dict[str, Any]]:
        """Size and change stamp of each source when it was ingested (the store's progress records);
        empty when the shard's store is not here (derived files only)."""
        from nagindex.index.store import IndexStore

        try:
            with IndexStore.open(self.path) as store:
                return store.all_progress()
        except NagIndexError:
            return {}

    def similarity(self, rows: np.ndarray) -> np.ndarray:
        """``(P, len(rows))`` similarity of sorted ``rows`` to each target (NaN where not scored)."""
        sums = np.asarray(self._sums[:, rows])
        if not self._exact:
            return sums
        sim = sums / self._norm[:, None]
        sim[sums < 0] = np.nan
        return sim

    # ------------------------------------------------------------ keys
    @property
    def _keys_exact(self) -> bool:
        return self._exact and self._combined is None and self._sampled is None

    def keys(self, t: int, lo: int, hi: int) -> np.ndarray:
        """Target ``t``'s ranking keys of rows ``lo:hi`` (meaningful where ``_eligible``)."""
        if self._sampled is not None:
            return np.asarray(self._sampled[t, lo:hi])
        if self._combined is not None:
            return np.asarray(self._combined[t, lo:hi])
        if self._exact:
            return -np.asarray(self._sums[t, lo:hi], dtype=np.int64)
        return 1.0 - np.asarray(self._sums[t, lo:hi])

    def distance(self, t: int, lo: int, hi: int) -> np.ndarray:
        """NAG distance ``1 - similarity`` of rows ``lo:hi`` (the reference's key, as float64)."""
        sums = np.asarray(self._sums[t, lo:hi])
        return 1.0 - (sums / self._norm[t] if self._exact else sums)

    def _eligible(self, lo: int, hi: int) -> np.ndarray:
        first = self._sums[0, lo:hi]
        return np.asarray(first >= 0) if self._exact else ~np.isnan(first)

    def _blocks(self, size: int):
        """``(lo, hi, visible)`` over the shard in blocks; ``visible`` is False for hidden rows."""
        for lo in range(0, len(self.view), size):
            hi = min(len(self.view), lo + size)
            visible = np.ones(hi - lo, dtype=bool)
            a, b = np.searchsorted(self.hidden, [lo, hi])
            visible[self.hidden[a:b] - lo] = False
            yield lo, hi, visible

    # ------------------------------------------------------------ scratch
    def _scratch_dir(self) -> Path:
        """This session's scratch folder on this shard, made on first use (``scratch.py``)."""
        if self._dir is None:
            from nagindex.query.scratch import new_scratch

            self._dir = new_scratch(f"scan-{self.part}")
        return self._dir

    def _scratch(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        self._scratch_dir()
        if int(np.prod(shape)) == 0:
            return np.zeros(shape, dtype=dtype)
        return np.lib.format.open_memmap(self._dir / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)

    def close(self) -> None:
        """Drop the scratch of the last query (its files go at once; the shard's maps stay open)."""
        self._sums = self._combined = self._quality = self._sampled = self._group_of = self._checked = None
        self._chosen, self._sorted = {}, {}
        if self._writer is not None and self._writer[2] is not None:
            self._writer[2].close()
            Path(self._writer[1]).unlink(missing_ok=True)
        self._writer = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _minmax(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Spec sec. 4 min-max normalisation with global ``lo``/``hi`` (a constant column gives 0)."""
    return np.zeros_like(x) if hi == lo else (x - lo) / (hi - lo)



class _Ids:
    """Docids held in memory, with the ``arrow()`` a ``ShardScan`` reads them through."""

    def __init__(self, docids: Any) -> None:
        import pyarrow as pa

        if hasattr(docids, "arrow"):
            self._arrow = pa.array(docids.arrow(), pa.large_string())
        else:
            self._arrow = pa.array([str(d) for d in docids], pa.large_string())

    def arrow(self) -> Any:
        return self._arrow


class _Arrays:
    def __init__(self, docids: Any, token_counts: np.ndarray) -> None:
        self.docids, self.token_counts = _Ids(docids), token_counts

    def __len__(self) -> int:
        return len(self.token_counts)


class ArrayPart(ShardScan):
    """A pool already scored and held in memory: ranking keys ``(P, n)`` (NaN: takes no part), docids
    and token counts. The array functions of ``select.py`` rank through it with the same rounds as an index."""

    def __init__(self, keys: np.ndarray, docids: Any, token_counts: np.ndarray, part: int = 0) -> None:
        self.part, self.hidden = part, np.zeros(0, np.int64)
        self.view = _Arrays(docids, token_counts)
        self._keys = keys
        self._exact = keys.dtype.kind in "iu"
        self._sums, self._combined, self._quality, self._sampled, self._dir = keys, None, None, None, None
        self._group_of, self._checked, self._chosen, self._sorted, self._writer = None, None, {}, {}, None
        self.plan = None

    def keys(self, t: int, lo: int, hi: int) -> np.ndarray:
        return self._keys[t, lo:hi] if self._sampled is None else np.asarray(self._sampled[t, lo:hi])

    def _eligible(self, lo: int, hi: int) -> np.ndarray:
        block = self._keys[0, lo:hi]
        return np.ones(len(block), bool) if self._exact else ~np.isnan(block)

    def score(self, plan: ScorePlan | None = None) -> dict[str, Any]:
        return self.stats()
