"""Inference-time scaling from k samples per question: pass@k, majority voting, verifier reranking.

Pure functions on already graded samples (see `reftune.grading.grade.grade`); `reftune.eval.sampling` runs the
sampling and calls them. Answers are compared through `reftune.grading.answers.normalize_answer`, the same key
grading uses, so "1,000" and "1000.0" are one answer here too.
"""

from __future__ import annotations

from collections.abc import Sequence

from reftune.grading.answers import normalize_answer


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c are correct (Chen et al., 2021).

    pass@k = 1 - C(n-c, k) / C(n, k): the chance that k samples drawn without replacement from the n
    contain at least one correct one. Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which needs no
    large binomials. k > n - c (every k-subset holds a correct sample) gives exactly 1.0.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def _keys(preds: Sequence[str | None], answer_type: str) -> list[str | None]:
    return [normalize_answer(p, answer_type) if p is not None else None for p in preds]


def majority_vote(preds: Sequence[str | None], answer_type: str = "numeric") -> str | None:
    """The most frequent normalised answer; None when no sample has one.

    Samples without an answer (None, or nothing `normalize_answer` can read) do not vote. A tie goes to
    the answer whose first occurrence comes earliest in `preds` (deterministic, and independent of how
    answers sort as strings).
    """
    counts: dict[str, int] = {}  # insertion order = order of first occurrence
    for key in _keys(preds, answer_type):
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    best, best_count = None, 0
    for key, count in counts.items():
        if count > best_count:  # strict: an equal count later on does not replace the earlier answer
            best, best_count = key, count
    return best


def rerank(preds: Sequence[str | None], scores: Sequence[float], answer_type: str = "numeric") -> str | None:
    """The normalised answer of the highest-scoring sample that has one (ties: the earliest such sample).

    `scores` are the verifier's P(correct) per sample; samples without an answer are never picked, even
    when they score highest. None when no sample has an answer.
    """
    if len(preds) != len(scores):
        raise ValueError(f"rerank: {len(preds)} answers but {len(scores)} scores")
    best, best_score = None, float("-inf")
    for key, score in zip(_keys(preds, answer_type), scores):
        if key is not None and score > best_score:
            best, best_score = key, score
    return best


__all__ = ["pass_at_k", "majority_vote", "rerank"]
