"""Train one proxy model on one arm's tokens, then measure it on the held-out target examples.

The rule every arm follows (``ProxyConfig``): the model is initialised from ``torch.manual_seed(seed)``,
so every arm starts from the same weights at the same seed; it reads its token stream once, in
order, cut into consecutive sequences of ``context`` tokens, ``batch_size`` of them a step, for
exactly ``steps`` steps (no token is read twice); AdamW (betas 0.9/0.95, no weight decay) with a
linear warm-up over the first ``warmup`` share of the steps and a cosine decay to a tenth of
``lr``; gradients clipped to norm 1.

Measures, on held-out examples only (``EvalSet``):

- bits per byte of the example texts: the summed negative log-likelihood of every token of each
  text, the first one conditioned on the end-of-document token, in nats, divided by ln 2 and by
  the texts' UTF-8 bytes (a text longer than the context is read in consecutive windows);
- for multiple-choice targets, each answer's summed log-probability given its question (cloze
  form: ``question + " " + answer``; a too-long question loses its start): the gold answer's
  (``gold_logprob``, nats, mean over examples) and the share of examples whose gold answer scores
  highest (``accuracy``, lm-eval's ``acc``; near chance at this size).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError


@dataclass(frozen=True)
class ProxyConfig:
    """The proxy model, its vocabulary and its training rule, the same for every arm of an evaluation."""

    vocab_size: int = 2048
    width: int = 128
    layers: int = 2
    heads: int = 4
    context: int = 128
    batch_size: int = 16
    lr: float = 3e-3
    warmup: float = 0.05
    curve_points: int = 4  # held-out bpb measured this many times, evenly spaced (the last at the end)
    tokenizer_chars: int = 4_000_000  # pool text the vocabulary is learnt from (a seeded sample)
    eval_batch: int = 32

    def __post_init__(self) -> None:
        for name in ("vocab_size", "width", "layers", "heads", "context", "batch_size", "curve_points",
                     "tokenizer_chars", "eval_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NagIndexError(f"proxy config: {name} must be a positive integer, got {value!r}")
        if self.width % self.heads:
            raise NagIndexError(f"proxy config: width {self.width} is not a multiple of heads {self.heads}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise NagIndexError(f"proxy config: lr must be a positive number, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise NagIndexError(f"proxy config: warmup must be in [0, 1), got {self.warmup}")

    @property
    def step_tokens(self) -> int:
        """Tokens one training step reads."""
        return self.batch_size * self.context


@dataclass
class EvalSet:
    """Held-out examples, tokenized once for every arm: scored sequences and where their scoring starts."""

    seqs: list[np.ndarray]  # bpb windows first, then one sequence per (example, answer)
    starts: np.ndarray  # per sequence: the first target position scored
    windows: int  # how many of ``seqs`` are bpb windows
    text_bytes: int
    owner: np.ndarray  # per answer sequence: its example
    gold: np.ndarray  # per example: the index of its gold answer sequence among ``seqs[windows:]``


@dataclass
class ArmRun:
    """One trained proxy model's held-out measures."""

    bpb: float
    gold_logprob: float | None
    accuracy: float | None
    curve: list[float] = field(default_factory=list)  # held-out bpb at each curve point


def prepare_eval(tokenizer: Any, texts: Sequence[str], choices: Sequence[Any] | None, context: int) -> EvalSet:
    """Tokenize the held-out ``texts`` (bpb) and, for a multiple-choice target, every (question, answer)."""
    eod = tokenizer.eod
    seqs: list[np.ndarray] = []
    for ids in tokenizer.encode(texts):
        full = np.concatenate([[eod], ids]).astype(np.int64)
        seqs.extend(full[lo:lo + context + 1] for lo in range(0, len(full) - 1, context))
    windows = len(seqs)
    starts = [0] * windows
    owner, gold = [], []
    if choices:
        questions = tokenizer.encode([c.question for c in choices])
        answers = tokenizer.encode([" " + a for c in choices for a in c.choices])
        at = 0
        for e, (c, q) in enumerate(zip(choices, questions)):
            gold.append(at + c.gold)
            for a in answers[at:at + len(c.choices)]:
                full = np.concatenate([[eod], q, a]).astype(np.int64)[-(context + 1):]
                seqs.append(full)
                starts.append(len(full) - 1 - min(len(a), context))
                owner.append(e)
            at += len(c.choices)
    return EvalSet(seqs=seqs, starts=np.asarray(starts, np.int64), windows=windows,
                   text_bytes=sum(len(t.encode("utf-8")) for t in texts), owner=np.asarray(owner, np.int64),
                   gold=np.asarray(gold, np.int64))


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block, the previous setting restored after (None: unchanged)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_arm(stream: np.ndarray, evalset: EvalSet, config: ProxyConfig, vocab: int, seed: int, steps: int,
              on_step: Callable[[int], Any] | None = None) -> ArmRun:
    """Train a fresh model (initialised from ``seed``) on the first ``steps x step_tokens (+1)`` tokens of
    ``stream``, measuring held-out bpb at the curve points and the answers at the end."""
    import torch
    from torch.nn import functional as F

    from nagindex.evaluate.model import TinyGPT

    per = config.step_tokens
    if steps < 1 or len(stream) < steps * per + 1:
        raise NagIndexError(f"proxy training: {len(stream):,} tokens cannot fill {steps} steps of {per:,}")
    torch.manual_seed(seed)
    model = TinyGPT(vocab, config.width, config.layers, config.heads, config.context)
    # fused: one kernel for the whole update; the per-tensor ops of a tiny model's many small tensors
    # otherwise cost as much as its forward and backward on a CPU
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    data = torch.from_numpy(np.asarray(stream[:steps * per + 1], dtype=np.int64))
    marks = set(curve_steps(steps, config.curve_points))
    warm = int(config.warmup * steps)
    curve = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(config.lr, step, steps, warm)
        chunk = data[step * per:(step + 1) * per + 1]
        x, y = chunk[:-1].view(config.batch_size, config.context), chunk[1:].view(config.batch_size, config.context)
        loss = F.cross_entropy(model(x).view(-1, vocab), y.reshape(-1))
        if not torch.isfinite(loss):
            raise NagIndexError(f"proxy training diverged at step {step + 1} of {steps} (loss {loss.item()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if on_step is not None:
            on_step(per)
        if step + 1 in marks:
            curve.append(_bpb(sequence_logprobs(model, evalset, config.eval_batch), evalset))
    scores = sequence_logprobs(model, evalset, config.eval_batch, windows_only=False)
    gold_logprob = accuracy = None
    if len(evalset.gold):
        gold, correct = answer_measures(scores, evalset)
        gold_logprob, accuracy = float(gold.mean()), float(correct.mean())
    return ArmRun(bpb=curve[-1], gold_logprob=gold_logprob, accuracy=accuracy, curve=curve)


def answer_measures(scores: np.ndarray, evalset: EvalSet) -> tuple[np.ndarray, np.ndarray]:
    """Per multiple-choice example of ``evalset``: its gold answer's summed log-probability (nats) and whether
    the gold answer scores highest (lm-eval's ``acc``), from ``sequence_logprobs(..., windows_only=False)``.
    Per example, not averaged, so that callers can pair two models' answers example by example."""
    answers = scores[evalset.windows:]
    bounds = np.searchsorted(evalset.owner, np.arange(len(evalset.gold) + 1))  # each example's answers
    picked = np.asarray([lo + int(np.argmax(answers[lo:hi])) for lo, hi in itertools.pairwise(bounds)], np.int64)
    return answers[evalset.gold], (picked == evalset.gold).astype(np.float64)


def curve_steps(steps: int, points: int) -> list[int]:
    """The steps after which held-out bpb is measured: ``points`` evenly spaced, the last one at the end."""
    return sorted({max(1, round(steps * (i + 1) / points)) for i in range(points)})


def _lr(peak: float, step: int, steps: int, warm: int) -> float:
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(steps - warm, 1)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def _bpb(scores: np.ndarray, evalset: EvalSet) -> float:
    return float(-scores[:evalset.windows].sum() / math.log(2) / evalset.text_bytes)


def sequence_logprobs(model: Any, evalset: EvalSet, batch: int, windows_only: bool = True) -> np.ndarray:
    """Summed log-probability (nats) of each sequence's targets from its start on; sequences are batched
    by length (padding after a sequence never reaches it: attention is causal). ``model`` maps token ids
    ``(batch, time)`` to next-token logits: the proxy GPT, or a wrapped backbone (``explain/deactivate.py``)."""
    import torch

    n = evalset.windows if windows_only else len(evalset.seqs)
    lengths = np.fromiter((len(s) for s in evalset.seqs[:n]), np.int64, count=n)
    order = np.argsort(lengths, kind="stable")
    out = np.zeros(n)
    with torch.inference_mode():
        for lo in range(0, n, batch):
            rows = order[lo:lo + batch]
            width = int(lengths[rows].max())
            ids = np.zeros((len(rows), width), np.int64)
            for i, r in enumerate(rows):
                ids[i, :lengths[r]] = evalset.seqs[r]
            ids_t = torch.from_numpy(ids)
            logp = torch.log_softmax(model(ids_t[:, :-1]).float(), dim=-1)
            picked = logp.gather(-1, ids_t[:, 1:, None])[..., 0].numpy()
            pos = np.arange(width - 1)
            keep = (pos[None, :] >= evalset.starts[rows, None]) & (pos[None, :] < lengths[rows, None] - 1)
            out[rows] = np.where(keep, picked, 0.0).sum(axis=1)
    return out
