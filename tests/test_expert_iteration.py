"""Expert iteration: `reftune selftrain selftrain.rounds=N` (rejection-sampling fine-tuning in rounds).

Round r samples from round r-1's chosen model, pools its distinct correct solutions with the earlier rounds', and
fine-tunes again from the start model (selftrain.round_start=base, STaR / Havrilla et al. 2024) or from round
r-1's model (previous). The final model is the round with the best validation accuracy."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from reftune import commands
from reftune.config import SelfTrainJob, load_config
from reftune.errors import UserError
from reftune.example import Example
from reftune.model.checkpoint import is_checkpoint, save_checkpoint
from reftune.train.self_training import augment_with_samples, best_round, pool_rounds

TINY = ["data.n_train=8", "data.n_val=4", "data.n_test=4", "data.n_extra=0", "data.n_pretrain=0",
        "selftrain.num_samples=2", "selftrain.max_new_tokens=8", "sft.epochs=1", "sft.batch_size=4",
        "eval.max_new_tokens=8", "eval.batch_size=8", "report_to=none"]


def _sample(text: str, correct: bool = True, finished: bool = True) -> dict:
    return {"text": text, "correct": correct, "finished": finished}


def test_best_round_is_the_highest_validation_accuracy_and_the_earliest_on_a_tie():
    assert best_round([{"best_val": 0.2}, {"best_val": 0.5}, {"best_val": 0.4}]) == 1
    assert best_round([{"best_val": 0.5}, {"best_val": 0.5}]) == 0
    with pytest.raises(ValueError):
        best_round([])


def test_pooled_rounds_keep_earlier_solutions_first_and_never_twice():
    ex = Example("q", "Q?", "3", cot="1 + 2 = 3\nThe answer is 3")
    round1 = [[_sample("a\nThe answer is 3"), _sample("b\nThe answer is 4", correct=False)]]
    round2 = [[_sample("a \n The answer is 3"), _sample("c\nThe answer is 3"), _sample("d\nThe answer is 3")]]
    pooled = pool_rounds(pool_rounds([[]], round1), round2)
    assert [s["text"] for s in pooled[0]] == [s["text"] for s in round1[0] + round2[0]]
    kept = [e.cot for e in augment_with_samples([ex], pooled, max_correct=2)]
    assert kept == [ex.cot, "a\nThe answer is 3", "c\nThe answer is 3"]  # "a" again (spacing aside) is a duplicate
    assert [e.cot for e in augment_with_samples([ex], pooled, max_correct=1)] == [ex.cot, "a\nThe answer is 3"]


def test_the_rounds_fields_are_checked():
    cfg = load_config(SelfTrainJob)
    assert (cfg.selftrain.rounds, cfg.selftrain.round_start) == (1, "base")
    with pytest.raises(UserError, match="selftrain.rounds"):
        load_config(SelfTrainJob, None, ["selftrain.rounds=0"])
    with pytest.raises(UserError, match="selftrain.round_start"):
        load_config(SelfTrainJob, None, ["selftrain.round_start=last"])


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    from reftune.data.synthetic import generate_splits
    from reftune.model.modeling import build_tiny_model, train_tokenizer
    splits = generate_splits(1234, {"train": 40})
    tok = train_tokenizer([e.question + "\n" + e.cot for e in splits["train"]], 300)
    return save_checkpoint(tmp_path_factory.mktemp("start") / "model", build_tiny_model(tok, 32, 1, 2, 64, 320, seed=0), tok)


@pytest.fixture
def scripted(monkeypatch):
    """Every question's samples: its gold CoT with a round mark (correct) and a wrong one; records the seeds."""
    import reftune.eval.sampling
    seeds = []

    def sample_and_grade(lm, tokenizer, examples, k, *, seed, **kw):
        seeds.append(seed)
        return [[_sample(f"{e.cot}\n(seed {seed})"), _sample("The answer is -1", correct=False)] for e in examples]

    monkeypatch.setattr(reftune.eval.sampling, "sample_and_grade", sample_and_grade)
    return seeds


@pytest.mark.slow
def test_two_rounds_sample_from_the_last_choice_pool_and_keep_the_best_on_validation(start, tmp_path, scripted):
    out = tmp_path / "ei"
    cfg = load_config(SelfTrainJob, None, [f"out_dir={out}", f"model.name_or_path={start}", *TINY,
                                           "selftrain.rounds=2", "seed=3"])
    info = commands.selftrain(cfg)

    assert scripted == [3, 4]  # a seed per round
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2] and info["rounds"] == rounds
    assert rounds[0]["sampled_from"] == str(start) and rounds[1]["sampled_from"] == str(out / "round-1" / "best")
    assert all(r["trained_from"] == str(start) for r in rounds)  # round_start=base
    assert [r["added"] for r in rounds] == [8, 16]  # round 2: round 1's solutions and its own, pooled
    lines = [(out / "data" / f"selftrain_round{r}.jsonl").read_text().splitlines() for r in (1, 2)]
    assert [len(x) for x in lines] == [16, 24]
    chosen = best_round(rounds)
    assert info["best_round"] == chosen + 1 and info["best_val"] == rounds[chosen]["best_val"]
    assert all(is_checkpoint(out / f"round-{r}" / "best") for r in (1, 2))
    assert (out / "best" / "model.safetensors").read_bytes() == \
        (out / f"round-{chosen + 1}" / "best" / "model.safetensors").read_bytes()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records if r["stage"] == "selftrain" and "best_val" in r and "round" in r] == [1, 2]
    assert {r["stage"] for r in records} >= {"selftrain_round1", "selftrain_round2"}

    results = json.loads((out / "results.json").read_text())  # the chosen model, evaluated like sft's and rl's
    assert set(results) == {"selftrain/val", "selftrain/test"} and results["selftrain/val"]["accuracy"] == info["best_val"]
    assert "expert iteration (best val round)" in (out / "report.md").read_text()

    again = commands.selftrain(cfg, resume=True)  # finished rounds are not trained again
    assert again["rounds"] == rounds and scripted == [3, 4]  # samples read back from samples_train_round*.jsonl


@pytest.mark.slow
def test_rounds_from_the_previous_model_and_one_round_as_plain_offline_self_training(start, tmp_path, scripted):
    prev = load_config(SelfTrainJob, None, [f"out_dir={tmp_path / 'prev'}", f"model.name_or_path={start}", *TINY,
                                            "selftrain.rounds=2", "selftrain.round_start=previous",
                                            "selftrain.max_correct=1"])
    rounds = commands.selftrain(prev)["rounds"]
    assert rounds[1]["trained_from"] == str(tmp_path / "prev" / "round-1" / "best")
    assert [r["added"] for r in rounds] == [8, 8]  # max_correct=1: round 1's solution stays the one kept

    one = commands.selftrain(replace(prev, out_dir=str(tmp_path / "one"), selftrain=replace(prev.selftrain, rounds=1)))
    assert one["best_round"] == 1 and is_checkpoint(tmp_path / "one" / "best")
    assert not (tmp_path / "one" / "round-1").exists()
    assert (tmp_path / "one" / "samples_train.jsonl").is_file() and (tmp_path / "one" / "data" / "selftrain.jsonl").is_file()
