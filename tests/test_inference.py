"""Specification of sampling-based evaluation (pass@k, voting@k, rerank@k), the verifier and offline self-training.

A scripted sampler gives numbers worked out by hand; a tiny model (hidden size 32), trained for a few
seconds to answer "Say 7." with "The answer is 7" (often wrongly at temperature 1), checks the real
sampling path, the verifier and the commands end to end.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from reftune import commands
from reftune.model.batching import collate_sft, encode_sft
from reftune.model.checkpoint import VALUE_HEAD_FILE, is_checkpoint, save_checkpoint
from reftune.config import EvalJob, SelfTrainJob, VerifierConfig, VerifierJob, load_config
from reftune.example import Example
from reftune.errors import UserError
from reftune.eval.sampling import evaluate_sampling, results_table, sample_and_grade
from reftune.train.logger import MetricsLogger
from reftune.model.modeling import PolicyWithValue, build_tiny_model, train_tokenizer
from reftune.model.prompts import build_prompt
from reftune.model.sampler import Samples
from reftune.train.self_training import augment_with_samples, augmentation_stats
from reftune.rewards.scorer import load_scorer, verifier_scores
from reftune.train.verifier import labelled_solutions, roc_auc, train_verifier
from reftune.eval.voting import pass_at_k


# A scripted sampler: hand-checkable numbers ---------------------------------------------------------------

class ScriptedSampler:
    """Returns the given texts, question after question, whatever the prompt (a `Sampler` for tests)."""

    def __init__(self, texts_per_question: list[list[str]]):
        self.queue = list(texts_per_question)

    def generate(self, prompt_ids, num_samples=1, temperature=1.0, top_p=1.0, max_new_tokens=128, generator=None):
        texts = [t for _ in prompt_ids for t in self.queue.pop(0)]
        assert len(texts) == len(prompt_ids) * num_samples
        return Samples([p for p in prompt_ids for _ in range(num_samples)], [[1]] * len(texts), [[0.0]] * len(texts),
                       [True] * len(texts), texts)


SCRIPT = [  # k = 4 samples for each of three questions
    ["The answer is 5", "The answer is 3", "The answer is 5.0", "I don't know"],     # gold 5: c=2, vote 5 ✓
    ["The answer is 7", "The answer is 7", "The answer is 12", "no answer"],         # gold 12: c=1, vote 7 ✗
    ["The answer is 1", "The answer is 2", "hmm", "The answer is"],                  # gold 9: c=0, vote 1 ✗
]
GOLD = ["5", "12", "9"]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [f"Say {n}.\nThe answer is {n}" for n in range(10)] * 5
    corpus += [e.question + "\n" + e.cot for e in _synthetic_examples()]
    return train_tokenizer(corpus, 300)


def _synthetic_examples():
    from reftune.data.synthetic import generate_splits
    return generate_splits(0, {"train": 20})["train"]


def _scripted_examples():
    return [Example(id=f"q{i}", question=f"Question {i}?", answer=g) for i, g in enumerate(GOLD)]


def test_scripted_numbers_by_hand(tokenizer, tmp_path):
    scores = {"The answer is 12": 0.9, "The answer is 3": 0.8, "hmm": 0.95}

    def scorer(questions, completions):
        assert questions == [q for q in ("Question 0?", "Question 1?", "Question 2?") for _ in range(4)]
        return [scores.get(c, 0.1) for c in completions]

    res = evaluate_sampling(None, tokenizer, _scripted_examples(), 4, sampler=ScriptedSampler(SCRIPT), scorer=scorer,
                            batch_size=8, out_path=tmp_path / "samples.jsonl")
    assert res["n"] == 3 and res["k"] == 4
    assert res["pass@1"] == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)
    assert res["pass@2"] == pytest.approx(((1 - 1 / 6) + (1 - 3 / 6) + 0) / 3)   # 1 - C(2,2)/C(4,2), 1 - C(3,2)/C(4,2)
    assert res["pass@4"] == pytest.approx(2 / 3)
    assert res["voting@4"] == pytest.approx(1 / 3)
    assert res["rerank@4"] == pytest.approx(1 / 3)   # q0 picks 3 (wrong), q1 picks 12 (right), "hmm" has no answer
    assert res["answered"] == pytest.approx((3 / 4 + 3 / 4 + 2 / 4) / 3)

    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"] and [r["gold"] for r in rows] == GOLD
    assert [r["vote"] for r in rows] == ["5", "7", "1"]
    assert [r["correct_vote"] for r in rows] == [True, False, False]
    assert [r["rerank"] for r in rows] == ["3", "12", "1"]
    assert [r["correct_rerank"] for r in rows] == [False, True, False]
    first = rows[0]["samples"][0]
    assert first == {"text": "The answer is 5", "pred": "5", "correct": True, "finished": True, "score": 0.1}

    table = results_table({"accuracy": 0.5, "n": 3}, res)
    for row in ("| greedy | 50.0 | 3 |", "| pass@1 (one sample) | 25.0 | 3 |", "| majority voting@4 | 33.3 | 3 |",
                "| verifier rerank@4 | 33.3 | 3 |", "| pass@4 (oracle: any sample correct) | 66.7 | 3 |"):
        assert row in table


def test_without_a_scorer_there_is_no_rerank(tokenizer):
    res = evaluate_sampling(None, tokenizer, _scripted_examples(), 4, sampler=ScriptedSampler(SCRIPT))
    assert "rerank@4" not in res and res["voting@4"] == pytest.approx(1 / 3)


def test_roc_auc_by_hand():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)      # a tie counts one half
    assert roc_auc([0.9, 0.1], [1, 0]) == 1.0
    assert roc_auc([0.3, 0.2], [1, 1]) is None                     # one class: undefined


def test_augment_keeps_gold_and_distinct_correct_finished_samples():
    ex = Example(id="a", question="q", answer="4", cot="2 + 2 = 4\nThe answer is 4")
    samples = [{"text": "2 + 2 = 4\nThe answer is 4", "correct": True, "finished": True},     # = gold: skipped
               {"text": "2 * 2 = 4\nThe answer is 4", "correct": True, "finished": True},     # kept
               {"text": "2 * 2 = 4\n The answer is  4", "correct": True, "finished": True},   # same up to spaces
               {"text": "The answer is 5", "correct": False, "finished": True},                # wrong
               {"text": "The answer is 4 and 4 and", "correct": True, "finished": False},     # cut off
               {"text": "4 = 4\nThe answer is 4", "correct": True, "finished": True},          # kept
               {"text": "1 + 3 = 4\nThe answer is 4", "correct": True, "finished": True}]      # over max_correct
    no_cot = Example(id="b", question="q2", answer="1")
    out = augment_with_samples([ex, no_cot], [samples, samples], max_correct=2)
    assert [e.cot for e in out] == [ex.cot, "2 * 2 = 4\nThe answer is 4", "4 = 4\nThe answer is 4"]
    assert [e.id for e in out] == ["a", "a#st0", "a#st1"]
    assert all(e.answer == "4" and e.question == "q" for e in out)
    assert augmentation_stats([ex, no_cot], out) == {"questions": 1, "questions_with_correct_samples": 1, "added": 2,
                                                    "added_per_question": 2.0, "examples": 3}


# A tiny trained model: the real sampling path ----------------------------------------------------------

def _say_examples(ids: range) -> list[Example]:
    return [Example(id=f"say-{i}", question=f"Say {i % 10}.", answer=str(i % 10), cot=f"The answer is {i % 10}")
            for i in ids]


@pytest.fixture(scope="module")
def lm(tokenizer):
    """Hidden size 32, trained ~2 s to answer "Say 7." with "The answer is 7": right often, not always."""
    lm = build_tiny_model(tokenizer, 32, 2, 4, 64, 64, seed=0)
    pairs = [encode_sft(tokenizer, build_prompt(e.question, "reft"), e.cot, 64) for e in _say_examples(range(10))]
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    rng = random.Random(0)
    lm.train()
    for _ in range(60):
        batch = collate_sft([rng.choice(pairs) for _ in range(16)], tokenizer.pad_token_id)
        lm(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return lm.eval()


@pytest.fixture(scope="module")
def sampled(lm, tokenizer):
    examples = _say_examples(range(12))
    return examples, sample_and_grade(lm, tokenizer, examples, 6, max_new_tokens=8, batch_size=24, seed=1)


def test_tiny_model_samples_are_mixed(sampled):
    _, per_question = sampled
    correct = [s["correct"] for samples in per_question for s in samples]
    assert len(per_question) == 12 and all(len(s) == 6 for s in per_question)
    assert 0 < sum(correct) < len(correct), "the fixture should give both right and wrong samples"


def test_sampling_metrics_are_consistent(lm, tokenizer, tmp_path):
    examples = _say_examples(range(12))
    res = evaluate_sampling(lm, tokenizer, examples, 6, max_new_tokens=8, batch_size=24, seed=1,
                            out_path=tmp_path / "s.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    flat = [s["correct"] for r in rows for s in r["samples"]]
    assert res["pass@1"] == pytest.approx(sum(flat) / len(flat))         # pass@1 = mean sample accuracy
    assert res["pass@6"] == pytest.approx(sum(any(s["correct"] for s in r["samples"]) for r in rows) / 12)
    assert res["pass@1"] <= res["pass@2"] <= res["pass@4"] <= res["pass@6"]
    assert res["voting@6"] <= res["pass@6"]
    assert res["voting@6"] == pytest.approx(sum(r["correct_vote"] for r in rows) / 12)
    again = evaluate_sampling(lm, tokenizer, examples, 6, max_new_tokens=8, batch_size=24, seed=1)
    assert again == res                                                     # seeded: same samples, same numbers
    assert res["pass@1"] == pytest.approx(sum(pass_at_k(6, sum(s["correct"] for s in r["samples"]), 1)
                                              for r in rows) / 12)


def test_verifier_trains_and_scores_in_unit_interval(lm, tokenizer, sampled, tmp_path):
    examples, per_question = sampled
    items = labelled_solutions(tokenizer, examples, per_question, "reft", 64)
    assert {y for _, y in items} == {0.0, 1.0}
    policy = PolicyWithValue(build_tiny_model(tokenizer, 32, 2, 4, 64, 64, seed=0))
    policy.lm.load_state_dict(lm.state_dict())
    cfg = VerifierConfig(epochs=1, batch_size=16, lr=1e-3)
    info = train_verifier(policy, tokenizer, items[:48], items[48:], cfg, out_dir=tmp_path,
                          logger=MetricsLogger(tmp_path, tensorboard=False))
    assert info["best_epoch"] == 1 and 0.0 <= info["val"]["auc"] <= 1.0
    assert is_checkpoint(tmp_path / "best") and (tmp_path / "best" / VALUE_HEAD_FILE).is_file()

    prompts = [build_prompt(e.question, "reft") for e in examples for _ in range(6)]
    completions = [s["text"] for samples in per_question for s in samples]
    scores = verifier_scores(policy, tokenizer, prompts, completions, batch_size=16, max_length=64)
    assert len(scores) == len(completions) and all(0.0 <= s <= 1.0 for s in scores)
    scorer = load_scorer(tmp_path / "best", "reft", batch_size=7, max_length=64)
    reloaded = scorer([e.question for e in examples for _ in range(6)], completions)
    assert reloaded == pytest.approx(scores, abs=1e-5)                    # saved = trained; batching-independent

    res = evaluate_sampling(lm, tokenizer, examples, 6, max_new_tokens=8, batch_size=24, seed=1, scorer=scorer)
    assert res["rerank@6"] <= res["pass@6"]


# The commands, end to end at a tiny size ----------------------------------------------------------------

TINY_DATA = ["data.n_train=16", "data.n_val=4", "data.n_test=4", "data.n_extra=0", "data.n_pretrain=0",
             "data.min_steps=2", "data.max_steps=4", "data.max_value=999", "model.max_length=256"]


def test_eval_verifier_selftrain_commands(lm, tokenizer, tmp_path):
    policy_dir = save_checkpoint(tmp_path / "policy", lm, tokenizer)
    v = load_config(VerifierJob, None, [f"out_dir={tmp_path / 'verifier'}", f"model.name_or_path={policy_dir}",
                                        *TINY_DATA, "verifier.num_samples=2", "verifier.max_new_tokens=8",
                                        "verifier.epochs=1", "verifier.batch_size=8", "verifier.max_questions=8"])
    info = commands.verifier(v)
    assert info["best_epoch"] == 1 and set(info["sample_accuracy"]) == {"train", "val"}
    assert len((tmp_path / "verifier" / "samples_train.jsonl").read_text().splitlines()) == 8

    e = load_config(EvalJob, None, [f"out_dir={tmp_path / 'eval'}", f"model.name_or_path={policy_dir}", *TINY_DATA,
                                    "eval.num_samples=3", "eval.max_new_tokens=8",
                                    f"eval.verifier={tmp_path / 'verifier' / 'best'}"])
    res = commands.eval(e)
    assert {"accuracy", "n", "answered", "sampling"} <= set(res)
    assert {"pass@1", "pass@2", "pass@3", "voting@3", "rerank@3"} <= set(res["sampling"])
    assert json.loads((tmp_path / "eval" / "results.json").read_text()) == res
    assert "| majority voting@3 |" in (tmp_path / "eval" / "results.md").read_text()
    rows = (tmp_path / "eval" / "test_samples.jsonl").read_text().splitlines()
    assert len(rows) == 4 and all(s["score"] is not None for s in json.loads(rows[0])["samples"])

    with pytest.raises(UserError, match="eval.num_samples"):
        commands.eval(load_config(EvalJob, None, [f"out_dir={tmp_path / 'e2'}", f"model.name_or_path={policy_dir}",
                                                *TINY_DATA, f"eval.verifier={tmp_path / 'verifier' / 'best'}"]))

    # a slice in chunks: eval.offset skips questions, eval.limit counts from there
    part = commands.eval(load_config(EvalJob, None, [f"out_dir={tmp_path / 'e3'}", f"model.name_or_path={policy_dir}",
                                                   *TINY_DATA, "eval.max_new_tokens=8", "eval.offset=1", "eval.limit=2"]))
    all_ids = [json.loads(line)["id"] for line in (tmp_path / "eval" / "test.jsonl").read_text().splitlines()]
    part_ids = [json.loads(line)["id"] for line in (tmp_path / "e3" / "test.jsonl").read_text().splitlines()]
    assert part["n"] == 2 and part_ids == all_ids[1:3]
    with pytest.raises(UserError, match="eval.offset: 4 skips all 4"):
        commands.eval(load_config(EvalJob, None, [f"out_dir={tmp_path / 'e4'}", f"model.name_or_path={policy_dir}",
                                                *TINY_DATA, "eval.offset=4"]))

    s = load_config(SelfTrainJob, None, [f"out_dir={tmp_path / 'st'}", f"model.name_or_path={policy_dir}", *TINY_DATA,
                                         "selftrain.num_samples=2", "selftrain.max_new_tokens=8", "sft.epochs=1",
                                         "sft.batch_size=8", "eval.max_new_tokens=8"])
    out = commands.selftrain(s)
    assert out["questions"] == 16 and out["examples"] == 16 + out["added"] and out["epochs_run"] == 1
    assert is_checkpoint(tmp_path / "st" / "best")
    assert len((tmp_path / "st" / "data" / "selftrain.jsonl").read_text().splitlines()) == out["examples"]


def test_new_config_fields_are_checked():
    from reftune.errors import ConfigError
    assert load_config(EvalJob, None, []).eval.num_samples == 0          # greedy only by default
    for cls, override in ((EvalJob, "eval.num_samples=-1"), (EvalJob, "eval.top_p=0"), (EvalJob, "eval.top_p=1.5"),
                          (VerifierJob, "verifier.num_samples=0"), (VerifierJob, "verifier.lr=0"),
                          (SelfTrainJob, "selftrain.max_correct=0"), (SelfTrainJob, "sft.batch_size=0")):
        with pytest.raises(ConfigError, match=override.split("=")[0]):
            load_config(cls, None, [override])


def test_cli_lists_the_new_commands(capsys):
    from reftune.cli import COMMANDS, main
    assert COMMANDS["verifier"] is VerifierJob and COMMANDS["selftrain"] is SelfTrainJob
    assert main(["config", "eval"]) == 0 and "eval.num_samples" in capsys.readouterr().out
    assert main(["config", "verifier"]) == 0 and "verifier.num_samples" in capsys.readouterr().out
    assert main(["config", "selftrain"]) == 0 and "selftrain.max_correct" in capsys.readouterr().out


def test_augment_under_r1_keeps_the_think_block_only():
    ex = Example(id="a", question="q", answer="4", cot="2 + 2 = 4\nThe answer is 4")
    sample = {"text": "\n2 * 2 = 4\nThe answer is 4\n</think>\n<answer>\n4\n</answer>", "correct": True, "finished": True}
    out = augment_with_samples([ex], [[sample]], max_correct=10, template="r1")
    assert out[1].cot == "2 * 2 = 4\nThe answer is 4"


def test_eval_precision_casts_the_generating_model(lm, tokenizer, tmp_path, monkeypatch):
    import torch
    policy_dir = save_checkpoint(tmp_path / "policy", lm, tokenizer)
    args = [f"model.name_or_path={policy_dir}", *TINY_DATA, "eval.max_new_tokens=8"]
    res = commands.eval(load_config(EvalJob, None, [f"out_dir={tmp_path / 'bf16'}", *args, "eval.precision=bf16"]))
    assert res["n"] == 4 and 0 <= res["accuracy"] <= 1                        # bf16 generation end to end
    seen = []  # (dtype, logits in fp32: the head's forward replaced by rollout.fp32_lm_head)
    monkeypatch.setattr(commands, "_evaluate", lambda cfg, run, lm, *a: seen.append(
        (lm.dtype, "forward" in vars(lm.lm_head))) or {"n": 0, "accuracy": 0.0, "answered": 0.0})
    commands.eval(load_config(EvalJob, None, [f"out_dir={tmp_path / 'fp16'}", *args, "eval.precision=fp16"]))
    commands.eval(load_config(EvalJob, None, [f"out_dir={tmp_path / 'fp16h'}", *args, "eval.precision=fp16",
                                              "rollout.fp32_lm_head=false"]))
    commands.eval(load_config(EvalJob, None, [f"out_dir={tmp_path / 'fp32'}", *args]))
    assert seen == [(torch.float16, True), (torch.float16, False), (torch.float32, False)]
