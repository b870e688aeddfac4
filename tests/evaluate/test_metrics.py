"""The measures themselves: DSIR's KL reduction, paired intervals, held-out bits per byte, multiple-choice configs."""
from __future__ import annotations

import numpy as np
import pytest

from nagindex.errors import InputError
from nagindex.evaluate.ngrams import BUCKETS, kl, kl_reduction, ngram_counts
from nagindex.evaluate.stats import paired_interval


def test_kl_reduction_rewards_a_selection_like_the_target():
    target = ngram_counts(["the cat sat on the mat", "a cat and a hat"] * 20)
    pool = ngram_counts(["stocks fell on monday", "the cat sat"] * 50 + ["bond yields rose"] * 100)
    assert len(target) == BUCKETS and target.sum() > 0
    assert kl_reduction(target, pool, target * 5) > 1.0  # a copy of the target's distribution
    assert abs(kl_reduction(target, pool, pool)) < 1e-12  # the pool itself: no reduction
    assert kl_reduction(target, pool, ngram_counts(["bond yields rose"] * 100)) < 0
    assert kl(target, pool) > kl(target, target * 100) > 0


def test_ngrams_are_lowercased_word_and_punctuation_runs_and_stable():
    a = ngram_counts(["Hello, World!"])
    assert a.sum() == 4 + 3  # hello , world ! and three pairs
    assert np.array_equal(a, ngram_counts(["hello , world !"]))
    assert np.array_equal(ngram_counts(["x y z"] * 3), 3 * ngram_counts(["x y z"]))


def test_paired_interval_is_a_t_interval_over_seed_differences():
    got = paired_interval([1.0, 2.0, 3.0], [0.5, 1.0, 1.0])
    diffs = np.array([0.5, 1.0, 2.0])
    half = 4.302653 * diffs.std(ddof=1) / np.sqrt(3)
    assert got["mean"] == pytest.approx(diffs.mean())
    assert got["lo"] == pytest.approx(diffs.mean() - half) and got["hi"] == pytest.approx(diffs.mean() + half)
    assert paired_interval([1.0], [2.0]) == {"mean": -1.0, "lo": None, "hi": None}


def test_bits_per_byte_count_every_token_once_whatever_the_context():
    """A text longer than the context is read in windows: every token is predicted exactly once."""
    from nagindex.evaluate.train import prepare_eval

    class Ids:
        eod = 0

        def encode(self, texts):
            return [np.arange(1, len(t) + 1, dtype=np.int32) for t in texts]

    ev = prepare_eval(Ids(), ["abcdefghij", "xyz"], None, context=4)
    targets = [len(s) - 1 - start for s, start in zip(ev.seqs, ev.starts)]
    assert sum(targets) == 10 + 3 and ev.windows == len(ev.seqs) and ev.text_bytes == 13
    assert [list(s) for s in ev.seqs[:3]] == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9, 10]]


def test_registry_targets_carry_their_multiple_choice_items():
    from nagindex.query.target import load_target

    arc = load_target("arc_challenge", offline=True)
    item = arc.choices[0]
    assert item.question.startswith("Question: ") and item.question.endswith("\nAnswer:")
    assert arc.texts[0].endswith("Answer: " + item.choices[item.gold])
    assert load_target("triviaqa", offline=True, limit=5).choices is None
    sample = load_target("mmlu", offline=True, limit=7, seed=2)
    assert len(sample.choices) == 7 and all(sample.texts[i].endswith(c.choices[c.gold])
                                            for i, c in enumerate(sample.choices))


def test_multiple_choice_fields_come_together_and_are_checked(tmp_path):
    from nagindex.query.target import load_target_file

    (tmp_path / "rows.jsonl").write_text('{"q": "2+2?", "opts": ["4", "5"], "a": 3}\n')
    base = "task: t\nsources:\n  - file: rows.jsonl\ndoc_to_text: \"{{ q }}\"\n"
    (tmp_path / "half.yaml").write_text(base + "doc_to_choice: opts\n")
    with pytest.raises(InputError, match=r"half.yaml: field 'doc_to_question': required with doc_to_choice"):
        load_target_file(tmp_path / "half.yaml")
    (tmp_path / "bad.yaml").write_text(base + "doc_to_question: \"{{ q }}\"\ndoc_to_choice: opts\ndoc_to_target: a\n")
    with pytest.raises(InputError, match=r"bad.yaml: field 'doc_to_target': .*answer index 3 is outside the 2 answers"):
        load_target_file(tmp_path / "bad.yaml")
