"""Specification of pass@k, majority voting and verifier reranking, against numbers worked out by hand."""

from __future__ import annotations

from math import comb

import pytest

from reftune.eval.voting import majority_vote, pass_at_k, rerank


# pass@k = 1 - C(n-c, k) / C(n, k) --------------------------------------------------------------------

@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 2, 0.7),          # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 2, 1, 0.4),          # pass@1 is the share of correct samples, c/n
    (4, 1, 2, 0.5),          # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (10, 3, 4, 1 - 35 / 210),  # 1 - C(7,4)/C(10,4)
    (8, 8, 8, 1.0),
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_one_when_every_k_subset_holds_a_correct_sample():
    assert pass_at_k(5, 4, 2) == 1.0   # k=2 > n-c=1
    assert pass_at_k(3, 1, 3) == 1.0   # drawing all samples always finds the correct one


def test_pass_at_k_is_zero_without_correct_samples():
    assert pass_at_k(5, 0, 1) == 0.0
    assert pass_at_k(5, 0, 5) == 0.0


def test_pass_at_k_matches_the_binomial_formula_and_stays_stable_for_large_n():
    for n in (1, 7, 20):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - comb(n - c, k) / comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert 0.0 < pass_at_k(2000, 3, 100) < 1.0  # C(2000, 100) overflows a float; the product does not


@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# majority voting ----------------------------------------------------------------------------------------

def test_majority_vote_counts_normalised_answers():
    assert majority_vote(["1,000", "7", "1000.0", "7.00", "$1000"]) == "1000"   # 3 votes for 1000, 2 for 7
    assert majority_vote(["0.50", "1/2", "3"]) == "0.5"


def test_samples_without_an_answer_do_not_vote():
    assert majority_vote([None, None, "4", None]) == "4"
    assert majority_vote(["12", "no number here", "12", "5", "5"]) == "12"  # unparsable counts as no answer
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_ties_go_to_the_answer_seen_first():
    assert majority_vote(["9", "3", "3", "9"]) == "9"
    assert majority_vote(["3", "9", "9", "3"]) == "3"
    assert majority_vote([None, "20", "100"]) == "20"  # not "100", which sorts first as a string


def test_majority_vote_other_answer_types():
    assert majority_vote(["(b)", "a", "B", "c"], "mcq") == "b"
    assert majority_vote(["Paris.", "paris", "Rome"], "text") == "paris"


# reranking -----------------------------------------------------------------------------------------------

def test_rerank_picks_the_highest_scored_sample_with_an_answer():
    assert rerank(["3", "5", "7"], [0.2, 0.9, 0.5]) == "5"
    assert rerank([None, "5", "7"], [0.99, 0.1, 0.3]) == "7"     # the top score has no answer: skipped
    assert rerank(["1,000", "2"], [0.8, 0.4]) == "1000"          # the answer comes back normalised


def test_rerank_ties_and_empty_cases():
    assert rerank(["4", "6"], [0.5, 0.5]) == "4"
    assert rerank([None, None], [0.3, 0.7]) is None
    with pytest.raises(ValueError):
        rerank(["1"], [0.1, 0.2])


def test_rerank_can_overrule_the_majority():
    preds, scores = ["8", "8", "8", "6"], [0.1, 0.2, 0.1, 0.9]
    assert majority_vote(preds) == "8"
    assert rerank(preds, scores) == "6"
