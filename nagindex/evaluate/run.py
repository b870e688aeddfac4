"""``evaluate()``: selections -> held-out examples -> training-free metrics -> proxy models -> paired intervals.

Each selection file is an arm, named after its file's stem; ``random`` is the baseline every
evaluation includes: at each seed, a fresh seeded random selection of the index with the
token count of the largest selection (the query's prefix rule), so its spread over seeds is
part of every interval. All arms share one held-out split (``heldout.py``), one vocabulary
(``tokenizer.py``, learnt from a pool sample), one model architecture and training rule
(``train.py``) and one token budget, so the only thing that differs between arms is their data.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.progress import StageTimer, notice, progress_bar

#: seed of the pool sample the vocabulary and the pool's n-gram distribution come from
POOL_SEED = 0
#: second word of the data-order seed ``[seed, DATA_ORDER]`` (the random arm's draw uses ``seed`` alone)
DATA_ORDER = 1


@dataclass
class EvaluationResult:
    """What ``evaluate`` found: ``data`` is the JSON document (``--json``), ``table()`` the terminal summary."""

    data: dict[str, Any]
    json_out: Path | None = None
    report: Path | None = None
    timings: str = ""
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        from nagindex.evaluate.report import format_table

        return format_table(self.data)


@dataclass
class _Arm:
    name: str
    file: str | None
    rows: list[np.ndarray]  # pool rows per seed (the same array at every seed for a selection file)


def evaluate(
    selections: Sequence[str | os.PathLike[str]],
    index_dir: str | os.PathLike[str] = "idx",
    *,
    target: str | Mapping[str, Any] | Any,
    seeds: int = 3,
    tokens: int | None = None,
    heldout: int = 500,
    split_seed: int = 0,
    json_out: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
    config: Any = None,
    pool_docs: int = 20_000,
    threads: int | None = None,
    device: str = "auto",
    progress: bool | None = None,
    weighting: str = "none",
    method: str = "nag",
) -> EvaluationResult:
    """Compare selections of the index with ``random`` on held-out examples of ``target``.

    ``selections``: files with a ``docid`` column (``nagindex query``/``mix`` outputs or any list of
    the index's docids). ``target``: a registered name (``"arc_challenge"``) or a mapping
    (``{"file": "mine.jsonl", "filter": {"dataset": "chem"}}``). The examples a selection's
    manifest shows in its profile are left out, and at most ``heldout`` of the rest (drawn with
    ``split_seed``) are what every number is measured on.

    Training-free, per arm: DSIR's KL reduction (``ngrams.py``) and the mean NAG similarity of its
    documents to the held-out examples (unweighted: each document counts once, as a query ranks
    them). Proxy training, per arm and seed 0..``seeds``-1: a tiny GPT (``config``: a
    ``train.ProxyConfig``) trained from scratch on ``tokens`` tokens of the arm (proxy vocabulary;
    default: as many as the smallest arm holds, so no arm repeats a token), then held-out bits per
    byte and, for multiple-choice targets, the gold answer's log-probability and accuracy; each
    arm's per-seed differences to ``random`` get a 95% t-interval. ``json_out`` writes the result
    as JSON, ``report`` an HTML page with plots (matplotlib: the ``report`` extra). ``threads``
    sets torch's CPU threads for the run (restored after); ``device`` encodes the held-out
    examples' NAGs (once per index: cached like a query's target). ``weighting`` scores the NAG
    similarity as ``query(weighting=...)`` does (``query/weighting.py``). ``method="nait"``: the training-free
    column is instead the mean NAIT score of the arm's documents against the directions of the held-out
    examples (``query/nait.py``; the index needs ``--features nag,nait``; no ``weighting``).
    """
    from nagindex.evaluate.heldout import split_heldout
    from nagindex.evaluate.ngrams import kl, kl_reduction, ngram_counts
    from nagindex.evaluate.selections import RANDOM, check_names, read_selection
    from nagindex.evaluate.stats import paired_interval
    from nagindex.evaluate.tokenizer import ProxyTokenizer
    from nagindex.evaluate.train import (
        ProxyConfig,
        curve_steps,
        prepare_eval,
        torch_threads,
        train_arm,
    )
    from nagindex.query.request import as_targets
    from nagindex.query.weighting import check_weighting

    check_weighting(weighting)
    _check_method(method, weighting, index_dir)
    config = config or ProxyConfig()
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise NagIndexError(f"seeds must be a positive integer, got {seeds!r}")
    requests = as_targets(target)
    if len(requests) != 1 or requests[0].kind == "features":
        raise NagIndexError("evaluate needs one target with example texts: a registered name or a file of examples")
    request = requests[0]
    if not selections:
        raise NagIndexError("no selection to evaluate: give one or more selection files")
    if report is not None:
        from nagindex.evaluate.report import check_report

        check_report(report)
    timer = StageTimer()
    sels = [read_selection(p) for p in selections]
    check_names(sels)
    with timer("held-out"):
        held = split_heldout(request, sels, heldout, split_seed)
    examples = held.examples
    notes = [(f"measured on {len(examples):,} held-out examples of {request.display} only ({held.excluded:,} of its "
              f"{held.available:,} examples built a selection's profile and are left out)"), *held.notes]
    for note in notes:
        notice(f"evaluate: {note}")

    docs = _documents(index_dir, sels, seeds, pool_docs, examples.texts, f"{request.display} (held-out)", device,
                      timer, weighting, method)
    score_key = SCORE_KEYS[method]
    texts = docs.texts
    with timer("tokenizer"):
        tokenizer = ProxyTokenizer.train(_capped([texts[r] for r in docs.sample.tolist()], config.tokenizer_chars),
                                         config.vocab_size)
        order = sorted(texts)
        ids = dict(zip(order, tokenizer.encode([texts[r] for r in order])))
        evalset = prepare_eval(tokenizer, examples.texts, examples.choices, config.context)
    with timer("n-grams"):
        target_counts = ngram_counts(examples.texts)
        pool_counts = ngram_counts(texts[r] for r in docs.sample.tolist())
    proxy_tokens = {a.name: [sum(len(ids[r]) + 1 for r in rows.tolist()) for rows in a.rows] for a in docs.arms}
    steps = _steps(tokens, proxy_tokens, config.step_tokens)

    results = []
    with torch_threads(threads), timer("train"):
        for arm in docs.arms:
            bar = progress_bar(total=seeds * steps * config.step_tokens, desc=f"evaluate {arm.name}", unit="tok",
                               enabled=progress)
            runs = []
            try:
                for seed, rows in enumerate(arm.rows):
                    arm_docs = [ids[r] for r in rows.tolist()]
                    shuffled = np.random.default_rng([seed, DATA_ORDER]).permutation(len(arm_docs))
                    stream = tokenizer.stream([arm_docs[i] for i in shuffled])
                    runs.append(train_arm(stream, evalset, config, tokenizer.vocab_size, seed, steps, bar.update))
            finally:
                bar.close()
            distinct = arm.rows[:1] if arm.name != RANDOM else arm.rows  # a file's rows are the same at every seed
            results.append({
                "name": arm.name, "file": arm.file,
                "documents": _mean_int(len(r) for r in distinct),
                "tokens": _mean_int(docs.tokens(r) for r in distinct),
                "proxy_tokens": _mean_int(proxy_tokens[arm.name][:len(distinct)]),
                "kl_reduction": float(np.mean([kl_reduction(target_counts, pool_counts,
                                                            ngram_counts(texts[x] for x in r.tolist()))
                                               for r in distinct])),
                score_key: float(np.mean([docs.similarity(r) for r in distinct])),
                "bpb": [run.bpb for run in runs],
                "gold_logprob": [run.gold_logprob for run in runs] if examples.choices else None,
                "accuracy": [run.accuracy for run in runs] if examples.choices else None,
                "curve_bpb": [run.curve for run in runs],
            })
    baseline = results[0]
    for arm_result in results[1:]:
        arm_result["delta_bpb_vs_random"] = paired_interval(arm_result["bpb"], baseline["bpb"])
        if examples.choices:
            arm_result["delta_gold_logprob_vs_random"] = paired_interval(arm_result["gold_logprob"],
                                                                         baseline["gold_logprob"])
    from nagindex.evaluate.model import TinyGPT, parameter_count

    data = {
        "target": request.display, "target_source": examples.source,
        "heldout_examples": len(examples), "examples_available": held.available,
        "profile_examples_excluded": held.excluded, "split_seed": split_seed, "heldout_ids": list(examples.ids),
        "multiple_choice": examples.choices is not None,
        "index": str(Path(index_dir).resolve()), "pool_documents": docs.pool_documents,
        "pool_tokens": docs.pool_tokens, "pool_sample_documents": len(docs.sample),
        f"pool_{score_key}": docs.similarity(docs.sample), "weighting": weighting, "method": method,
        "kl_target_pool": kl(target_counts, pool_counts),
        "seeds": list(range(seeds)), "train_tokens": steps * config.step_tokens,
        "curve_tokens": [s * config.step_tokens for s in curve_steps(steps, config.curve_points)],
        "proxy": {**dataclasses.asdict(config), "vocab": tokenizer.vocab_size,
                  "parameters": parameter_count(TinyGPT(tokenizer.vocab_size, config.width, config.layers,
                                                        config.heads, config.context)),
                  "threads": threads},
        "notes": notes,
        "arms": results,
        "timings": {k: round(v, 1) for k, v in timer.seconds.items()},
    }
    result = EvaluationResult(data=data, timings=timer.summary(), notes=notes)
    if json_out is not None:
        from nagindex.fsio import atomic_path

        result.json_out = Path(json_out)
        result.json_out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(result.json_out) as tmp:
            tmp.write_text(json.dumps(data, indent=1))
    if report is not None:
        from nagindex.evaluate.report import write_report

        result.report = write_report(data, report)
    return result


#: the JSON key of each arm's training-free score against the held-out examples, per ``method``
SCORE_KEYS = {"nag": "nag_similarity", "nait": "nait_score"}


def _check_method(method: str, weighting: str, index_dir: Any) -> None:
    """``method`` is one of ``SCORE_KEYS``; ``nait`` needs an index with NAIT features (refused before any
    work) and takes no ``weighting``."""
    if method not in SCORE_KEYS:
        raise NagIndexError(f"--method {method!r}: choose one of {', '.join(SCORE_KEYS)}")
    if method == "nait":
        from nagindex.index.sharded import open_index
        from nagindex.query.nait import require_nait

        if weighting != "none":
            raise NagIndexError(f"--weighting {weighting} applies to --method nag only")
        require_nait(open_index(index_dir).manifest, index_dir)


@dataclass
class _Documents:
    """What the evaluation reads from the index: the arms' and the pool sample's rows, their texts and
    similarities to the held-out profile, their token counts (the index's) and the pool's totals."""

    arms: list[_Arm]
    sample: np.ndarray
    texts: dict[int, str]
    sims: dict[int, float]
    pool_documents: int
    pool_tokens: int
    row_tokens: dict[int, int]

    def tokens(self, rows: np.ndarray) -> int:
        """The index's token count of ``rows``, summed."""
        return sum(self.row_tokens[r] for r in rows.tolist())

    def similarity(self, rows: np.ndarray) -> float:
        """The mean NAG similarity (NAIT score) of ``rows``, each counting once (not weighted by tokens)."""
        return float(np.mean([self.sims[r] for r in rows.tolist()]))


def _documents(index_dir: Any, sels: Sequence[Any], seeds: int, pool_docs: int, heldout: Sequence[str],
               label: str, device: str, timer: StageTimer, weighting: str = "none",
               method: str = "nag") -> _Documents:
    """Locate every selection's documents (an unknown docid fails before any model runs), draw ``random``
    per seed within the largest selection's tokens and the pool sample, then read their texts back and score
    them against a profile of the ``heldout`` examples (encoded with the index's backbone, cached), or against
    their NAIT directions with ``method="nait"``."""
    from nagindex.evaluate.pool import Pool
    from nagindex.evaluate.selections import RANDOM
    from nagindex.query.profile import count_profile
    from nagindex.query.target_nags import target_codes

    pool = Pool.open(index_dir)
    try:
        with timer("documents"):
            arms = [_Arm(s.name, str(s.path), [pool.locate(s.docids, s.path)] * seeds) for s in sels]
            budget = max(int(pool.tokens_of(a.rows[0]).sum()) for a in arms)
            arms.insert(0, _Arm(RANDOM, None, [pool.draw(budget, seed) for seed in range(seeds)]))
            sample = pool.sample(pool_docs, POOL_SEED)
        if method == "nait":
            from nagindex.query.nait import target_directions

            with timer("held-out directions"):
                pool.score_nait(target_directions(index_dir, pool.manifest, heldout, name=label, device=device))
        else:
            with timer("held-out NAGs"):
                codes = target_codes(index_dir, pool.manifest, heldout, name=label, device=device)
                pool.score(count_profile(codes, pool.manifest["width"]), weighting)
        with timer("texts"):
            texts, sims = pool.fetch(np.concatenate([*(r for a in arms for r in a.rows), sample]))
        needed = np.unique(np.concatenate([*(r for a in arms for r in a.rows), sample]))
        return _Documents(arms=arms, sample=sample, texts=texts, sims=sims, pool_documents=len(pool),
                          pool_tokens=pool.total_tokens, row_tokens=dict(zip(needed.tolist(),
                                                                             pool.tokens_of(needed).tolist())))
    finally:
        pool.close()


def _steps(tokens: int | None, proxy_tokens: dict[str, list[int]], step_tokens: int) -> int:
    """Training steps of every model: ``tokens`` (proxy vocabulary) or as many as the smallest arm holds,
    whole steps, with one token to spare for the last target; an arm too small for ``tokens`` is an error."""
    smallest_arm, smallest = min(((name, min(n)) for name, n in proxy_tokens.items()), key=lambda x: x[1])
    if tokens is None:
        steps = (smallest - 1) // step_tokens
    else:
        steps = int(tokens) // step_tokens
        if steps * step_tokens + 1 > smallest:
            raise NagIndexError(f"--tokens {tokens:,}: arm {smallest_arm!r} holds only {smallest:,} tokens (proxy "
                                "vocabulary, end tokens included); every arm must hold the budget so none repeats data")
    if steps < 1:
        raise NagIndexError(f"arm {smallest_arm!r} holds {smallest:,} tokens, fewer than one training step "
                            f"({step_tokens:,}): select more data, or use a smaller batch_size x context")
    return steps


def _capped(texts: Sequence[str], chars: int) -> list[str]:
    """The first texts whose lengths add up to ``chars`` (the vocabulary needs a sample, not the pool)."""
    out, total = [], 0
    for text in texts:
        if total >= chars:
            break
        out.append(text)
        total += len(text)
    return out


def _mean_int(values: Any) -> int:
    return round(float(np.mean(list(values))))
