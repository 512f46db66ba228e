"""Specification of R^3's start states (`reftune.rl.curriculum`): how demonstrations split into steps, which
prefixes the policy may start from, how the schedules move the start, and the RL loop starting from them."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from reftune.config import RunConfig, load_config
from reftune.rl.curriculum import (AdaptiveSchedule, Curriculum, MixedSchedule, StagedSchedule, encode_start,
                                from_config, split_steps, start_states)
from reftune.example import Example
from reftune.errors import UserError
from reftune.train.context import RunContext
from reftune.data.synthetic import generate_splits

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mwp_reft"
SHIPPED = Path(__file__).resolve().parents[1] / "src" / "reftune" / "configs"


def _release(name: str) -> list[Example]:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return [Example(id=str(r["item_id"]), question=r["question"], answer=str(r["answer_value"]), cot=r["answer_cot"])
            for r in json.loads(path.read_text())]


@pytest.fixture(scope="module")
def tokenizer():
    from reftune.model.modeling import train_tokenizer
    splits = generate_splits(0, {"train": 32})
    return train_tokenizer([e.question + "\n" + e.cot + "\n" + e.meta["program"] for e in splits["train"]], 300)


# --- start states on the ReFT release's demonstrations ----------------------------------------------------

@pytest.mark.parametrize("name, kind", [("svamp_nl.json", "nl"), ("svamp_python_sdp.json", "program")])
def test_every_start_state_is_a_prefix_of_the_demonstration(name, kind):
    """For all ~3000 SVAMP demonstrations: the steps rebuild the text exactly (k = K), the K start states are
    its prefixes for k = 0..K-1, growing, each ending at a line break, and the last step is never given."""
    for ex in _release(name):
        steps = split_steps(ex.cot)
        assert "".join(steps) == ex.cot
        assert steps == split_steps(ex.cot, kind)  # "auto" recognises the kind
        states = start_states(ex)
        assert len(states) == len(steps) and states[0] == ""
        for k, state in enumerate(states):
            assert ex.cot.startswith(state) and state == "".join(steps[:k])
            if k:
                assert len(state) > len(states[k - 1]) and state.endswith("\n")
        assert len(states[-1]) < len(ex.cot)
        if kind == "program":  # the head (def + docstring) comes with the first statement, never alone
            assert steps[0].startswith("def solution():") and steps[0].rstrip().count("\n") >= 2
        else:
            assert "answer is" in steps[-1]


def test_start_states_take_the_demonstrations_own_tokens(tokenizer):
    """Appended to the prompt's ids, a start state is the tokens SFT saw: a prefix of encode(cot). Where a
    token straddles the cut (byte-level BPE joins "\\n" with the next indentation), it is left to the policy."""
    for ex in _release("svamp_python_sdp.json")[:200] + _release("svamp_nl.json")[:200]:
        full = tokenizer(ex.cot, add_special_tokens=False)["input_ids"]
        for state in start_states(ex)[1:]:
            ids, text = encode_start(tokenizer, ex.cot, state)
            assert ids == full[:len(ids)] and tokenizer.decode(ids) == text
            assert state.startswith(text) and len(state) - len(text) <= 2
    program = "def solution():\n    x = 3\n    return x"
    ids, text = encode_start(tokenizer, program, "def solution():\n    x = 3\n")
    assert text == "def solution():\n    x = 3"  # "\n   " is one token here, so the newline stays to write
    assert encode_start(tokenizer, program, "") == ([], "")


# --- splitting rules, by hand ------------------------------------------------------------------------------

def test_nl_steps_are_lines_with_blank_lines_kept_on_the_step_above():
    assert split_steps("12 + 5 = 17\n17 * 2 = 34\nThe answer is 34", "nl") == \
        ["12 + 5 = 17\n", "17 * 2 = 34\n", "The answer is 34"]
    assert split_steps("\nFirst.\n\n  \nSecond.\n\nThe answer is 2.\n", "nl") == \
        ["\nFirst.\n\n  \n", "Second.\n\n", "The answer is 2.\n"]
    assert split_steps("", "nl") == [] and split_steps("one line", "nl") == ["one line"]


def test_program_steps_are_statements_after_the_head():
    program = ('def solution():\n'
               '    """Ann has 3 pens.\n'
               '    How many?"""\n'
               '    total = 0\n'
               '    for i in range(3):\n'
               '        total += i\n'
               '\n'
               '    if total > 2:\n'
               '        total = total - 1\n'
               '    else:\n'
               '        total = 0\n'
               '    values = [total,\n'
               '              1]\n'
               '    result = sum(\n'
               '        values\n'
               '    )\n'
               '    return result')
    assert split_steps(program) == [
        'def solution():\n    """Ann has 3 pens.\n    How many?"""\n    total = 0\n',
        '    for i in range(3):\n        total += i\n\n',
        '    if total > 2:\n        total = total - 1\n    else:\n        total = 0\n',
        '    values = [total,\n              1]\n',
        '    result = sum(\n        values\n    )\n',
        '    return result']
    # one-line docstring, no docstring, imports before the def: all part of the head
    assert split_steps('import math\ndef solution():\n    """Q?"""\n    a = 1\n    return a') == \
        ['import math\ndef solution():\n    """Q?"""\n    a = 1\n', '    return a']
    assert split_steps("def solution():\n    a = 1\n    return a") == ["def solution():\n    a = 1\n", "    return a"]
    assert split_steps('def solution():\n    """Q?"""') == ['def solution():\n    """Q?"""']
    assert split_steps("a = 1\nb = 2", "program") == ["a = 1\n", "b = 2"]  # no def: split as lines


def test_token_chunks_cut_at_token_boundaries(tokenizer):
    cot = generate_splits(1, {"train": 1})["train"][0].cot
    ids = tokenizer(cot, add_special_tokens=False)["input_ids"]
    steps = split_steps(cot, "tokens", tokenizer, n_token_chunks=4)
    assert "".join(steps) == cot and len(steps) == 4
    sizes = [len(encode_start(tokenizer, cot, "".join(steps[:k + 1]))[0]) for k in range(4)]
    assert sizes[-1] == len(ids) and all(abs(b - a - len(ids) / 4) <= 1 for a, b in zip([0] + sizes, sizes))
    assert len(split_steps(cot, "tokens", tokenizer, n_token_chunks=10_000)) == len(ids)  # at most one per token
    with pytest.raises(ValueError, match="tokenizer"):
        split_steps(cot, "tokens")


def test_questions_without_or_with_a_one_step_demonstration_start_from_the_question():
    assert start_states(Example("a", "Q?", "1")) == [""]
    assert start_states(Example("a", "Q?", "1", cot="The answer is 1")) == [""]


# --- schedules -----------------------------------------------------------------------------------------------

def _run(schedule, accuracies, num_states=7):
    """The k a demonstration with `num_states` start states gets at each iteration, given each one's accuracy."""
    ks = []
    for step, acc in enumerate(accuracies, 1):
        k = schedule.sample(num_states, random.Random(step))
        ks.append(k)
        schedule.update(step, {k: (acc, 8)})
    return ks


def test_staged_schedule_moves_from_the_answer_back_to_the_question_every_n_steps():
    ks = _run(StagedSchedule(stages=3, steps_per_stage=2), [0.0] * 8)
    assert ks == [6, 6, 3, 3, 0, 0, 0, 0]  # K = 7: k = 6, 3, 0; the last stage stays
    assert _run(StagedSchedule(stages=3, steps_per_stage=2), [0.0] * 6, num_states=1) == [0] * 6
    assert _run(StagedSchedule(stages=1, steps_per_stage=2), [1.0] * 3) == [0, 0, 0]
    with pytest.raises(ValueError):
        StagedSchedule(stages=3)


def test_staged_schedule_advances_when_the_stage_is_learned():
    """advance_accuracy: the mean accuracy of the stage's last `window` iterations must reach it; a new stage
    starts with an empty window; steps_per_stage then caps the stage."""
    acc = [0.2, 0.9, 0.9, 1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    assert _run(StagedSchedule(3, 0, advance_accuracy=0.8, window=2), acc) == [6, 6, 6, 3, 3, 3, 3, 3, 3, 3]
    assert _run(StagedSchedule(3, 4, advance_accuracy=0.8, window=2), acc) == [6, 6, 6, 3, 3, 3, 3, 0, 0, 0]


def test_mixed_schedule_covers_every_start_state():
    rng = random.Random(0)
    assert {MixedSchedule().sample(5, rng) for _ in range(200)} == set(range(5))
    assert {MixedSchedule().sample(1, rng) for _ in range(20)} == {0}


def test_schedule_state_round_trips():
    """A schedule restored from its state_dict continues exactly as the original (resume)."""
    a = StagedSchedule(4, 3, advance_accuracy=0.5, window=2)
    _run(a, [0.6, 0.1, 0.6, 0.7])
    b = StagedSchedule(4, 3, advance_accuracy=0.5, window=2)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.state_dict() == a.state_dict() and b.sample(9, None) == a.sample(9, None)
    for step, acc in enumerate([0.0, 0.9, 0.2, 0.9, 0.9], 5):
        assert a.update(step, {0: (acc, 4)}) == b.update(step, {0: (acc, 4)})
        assert a.sample(9, None) == b.sample(9, None)
    cur = Curriculum(MixedSchedule(), tokenizer=None)
    with pytest.raises(UserError, match="staged"):
        cur.load_state_dict(Curriculum(a, tokenizer=None).state_dict())


class Drawn(random.Random):
    """An rng whose randint returns `pick` clamped into the range asked for, and records the ranges."""

    def __init__(self, pick: int):
        super().__init__(0)
        self.pick, self.asked = pick, []

    def randint(self, a: int, b: int) -> int:
        self.asked.append((a, b))
        return min(max(self.pick, a), b)


def _visit(schedule, key, k, accuracy, num_states=7):
    """Draw question `key` (its range is recorded), then report its accuracy from start k."""
    rng = Drawn(k)
    schedule.sample(num_states, rng, key)
    schedule.update(0, {}, [(key, k, accuracy)])
    return schedule.ranges[key][:2]


def test_adaptive_schedule_gives_fewer_steps_after_a_success_and_more_after_a_failure():
    """K = 7 (k = 0..6), threshold 0.5: bisection while the range is wide, then one step at a time."""
    s = AdaptiveSchedule(threshold=0.5)
    assert _visit(s, "q", 4, 0.75) == [0, 3]   # solved from 4 given steps: at most 3 from now on
    assert _visit(s, "q", 1, 0.25) == [2, 3]   # failed from 1: at least 2
    assert _visit(s, "q", 3, 0.5) == [2, 2]    # 0.5 reaches the threshold: hi = 2 = lo
    assert _visit(s, "q", 2, 1.0) == [1, 1]    # one k wide: a success moves both ends down
    assert _visit(s, "q", 1, 0.0) == [2, 2]    # ... and a failure both up
    assert _visit(s, "q", 2, 1.0) == [1, 1]
    assert _visit(s, "q", 1, 1.0) == [0, 0]    # from the plain question now
    assert _visit(s, "q", 0, 1.0) == [0, 0]    # k never goes below 0
    assert _visit(s, "q", 0, 0.0) == [1, 1]    # forgotten: one step given again
    t = AdaptiveSchedule(threshold=0.5)
    assert _visit(t, "hard", 6, 0.0) == [6, 6] and _visit(t, "hard", 6, 0.0) == [6, 6]  # never the whole answer
    assert _visit(AdaptiveSchedule(threshold=0.8), "q", 3, 0.75) == [4, 6]  # 0.75 < 0.8: a failure


def test_adaptive_schedule_draws_k_in_each_questions_own_range():
    s = AdaptiveSchedule()
    rng = Drawn(99)
    assert s.sample(7, rng, "a") == 6 and rng.asked == [(0, 6)]  # a new question: the full range
    s.update(1, {}, [("a", 6, 1.0)])
    assert s.sample(7, rng, "a") == 5 and s.sample(4, rng, "b") == 3 and rng.asked[1:] == [(0, 5), (0, 3)]
    assert s.sample(1, rng, "c") == 0 and "c" not in s.ranges  # no demonstration: the question, untracked
    s.update(2, {}, [("c", 0, 0.0), ("unseen", 2, 1.0)])  # ignored, not invented
    assert set(s.ranges) == {"a", "b"}
    # a question's first draw is the mixed schedule's, from the same rng
    assert [AdaptiveSchedule().sample(7, random.Random(i), "x") for i in range(20)] == \
        [MixedSchedule().sample(7, random.Random(i)) for i in range(20)]
    with pytest.raises(ValueError):
        AdaptiveSchedule(threshold=0)


def test_curriculum_moves_each_question_by_its_own_samples():
    """Curriculum.update groups the samples by (question, k): two questions of G = 3 samples each."""
    s = AdaptiveSchedule(threshold=0.5)
    for key in ("a", "b"):
        s.sample(5, Drawn(2), key)
    cur = Curriculum(s, tokenizer=None)
    metrics = cur.update(1, [2, 2, 2, 3, 3, 3], [True, True, False, False, False, True], ["a"] * 3 + ["b"] * 3)
    assert s.ranges == {"a": [0, 1, 5], "b": [4, 4, 5]}  # a: 2/3 correct from k=2; b: 1/3 from k=3
    assert metrics == {"acc_k/2": pytest.approx(2 / 3), "acc_k/3": pytest.approx(1 / 3), "start_k": 2.5,
                       "adaptive_max_k": 2.5, "adaptive_at_question": 0.0}
    s.update(2, {}, [("a", 1, 1.0)])
    assert s.update(3, {}, []) == {"adaptive_max_k": 2.0, "adaptive_at_question": 0.5}


def test_adaptive_state_round_trips():
    a = AdaptiveSchedule(0.5)
    for key, k, acc in (("a", 4, 1.0), ("b", 2, 0.0), ("a", 1, 0.0)):
        _visit(a, key, k, acc)
    b = AdaptiveSchedule(0.5)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.ranges == a.ranges == {"a": [2, 3, 7], "b": [3, 6, 7]}
    for step in range(5):
        assert a.sample(7, random.Random(step), "a") == b.sample(7, random.Random(step), "a")
    with pytest.raises(UserError, match="adaptive"):
        Curriculum(MixedSchedule(), None).load_state_dict(Curriculum(a, None).state_dict())


def test_curriculum_chooses_reproducibly_and_reports_accuracy_per_k(tokenizer):
    examples = generate_splits(2, {"train": 6})["train"] + [Example("x", "Q?", "3")]
    cur = Curriculum(MixedSchedule(), tokenizer, seed=1)
    starts = cur.choose(examples, step=4)
    assert [(s.k, s.ids, s.text) for s in starts] == [(s.k, s.ids, s.text) for s in cur.choose(examples, step=4)]
    assert starts[-1].k == 0 and starts[-1].ids == [] and starts[-1].text == ""
    for ex, s in zip(examples, starts):
        assert (ex.cot or "").startswith(s.text) and (s.k == 0) == (s.text == "")
    assert Curriculum.complete(starts[:2], ["a", "b", "c", "d"], group=2) == \
        [starts[0].text + "a", starts[0].text + "b", starts[1].text + "c", starts[1].text + "d"]
    metrics = cur.update(5, [0, 0, 2, 2, 2], [True, False, True, True, False])
    assert metrics == {"acc_k/0": 0.5, "acc_k/2": pytest.approx(2 / 3), "start_k": 1.2}


def test_config_builds_the_curriculum_from_the_command_line():
    cfg = load_config(RunConfig, None, ["curriculum=r3", "curriculum.schedule=mixed", "curriculum.stages=5"])
    assert (cfg.curriculum.name, cfg.curriculum.schedule, cfg.curriculum.stages) == ("r3", "mixed", 5)
    assert isinstance(from_config(cfg.curriculum, None).schedule, MixedSchedule)
    assert from_config(load_config(RunConfig).curriculum, None) is None
    staged = load_config(RunConfig, None, ["curriculum=r3", "curriculum.schedule=staged", "curriculum.stages=2",
                                           "curriculum.advance_accuracy=0.7", "curriculum.steps_per_stage=0"])
    assert from_config(staged.curriculum, None).schedule.advance_accuracy == 0.7
    with pytest.raises(UserError, match="curriculum.advance_accuracy"):
        load_config(RunConfig, None, ["curriculum.schedule=staged", "curriculum.steps_per_stage=0"])
    adaptive = load_config(RunConfig, None, ["curriculum=r3", "curriculum.schedule=adaptive",
                                             "curriculum.adaptive_threshold=0.75"])
    assert from_config(adaptive.curriculum, None).schedule.threshold == 0.75
    with pytest.raises(UserError, match="curriculum.adaptive_threshold"):
        load_config(RunConfig, None, ["curriculum.adaptive_threshold=0"])
    with pytest.raises(UserError, match="rl.dynamic_sampling"):
        load_config(RunConfig, None, ["curriculum=r3", "curriculum.schedule=adaptive", "rl.dynamic_sampling=true"])


def test_shipped_long_chain_config_generates_six_to_eight_steps():
    cfg = load_config(RunConfig, SHIPPED / "r3_long.yaml")
    assert (cfg.curriculum.name, cfg.curriculum.schedule) == ("r3", "mixed")
    d = cfg.data
    splits = generate_splits(d.seed, {"train": 200, "val": 20}, d.min_steps, d.max_steps, d.cot, d.max_value)
    assert {e.meta["steps"] for e in splits["train"]} == {6, 7, 8}
    assert all(len(start_states(e)) == e.meta["steps"] + 1 for e in splits["train"])  # K = steps + answer line


# --- the RL loop from start states -------------------------------------------------------------------------

@pytest.mark.slow
def test_rl_starts_from_demonstration_prefixes_and_logs_accuracy_per_k(tokenizer, tmp_path, monkeypatch):
    """Two PPO iterations with a staged curriculum (2 stages of 1 iteration): iteration 1 starts next to the
    answer, iteration 2 from the question. The prompts carry the start state's tokens, the grader sees start
    text + response, acc_k/<k> is logged, and the schedule's state is in the resumable checkpoint."""
    import torch

    import reftune.rewards.functions
    import reftune.rl.loop
    from reftune.model.batching import encode
    from reftune.model.checkpoint import load_state
    from reftune.config import RLConfig
    from reftune.train.logger import MetricsLogger, read_metrics
    from reftune.model.modeling import PolicyWithValue, build_tiny_model
    from reftune.model.prompts import build_prompt
    from reftune.model.sampler import HFSampler

    splits = generate_splits(0, {"train": 8, "val": 3})
    policy = PolicyWithValue(build_tiny_model(tokenizer, 32, 2, 2, 64, 320, seed=0))
    ref = build_tiny_model(tokenizer, 32, 2, 2, 64, 320, seed=0).eval().requires_grad_(False)
    prompts, graded = [], []
    generate, grade = HFSampler.generate, reftune.rewards.functions.grade  # the grader the RL loop's rewards call
    monkeypatch.setattr(HFSampler, "generate", lambda self, p, *a, **k: prompts.append(p) or generate(self, p, *a, **k))
    monkeypatch.setattr(reftune.rewards.functions, "grade",
                        lambda texts, exs, *a: graded.append((texts, exs)) or grade(texts, exs, *a))

    cfg = RLConfig(steps=2, prompts_per_step=4, num_generations=2, minibatches=2, max_new_tokens=8, eval_every=2,
                   eval_at_start=False)  # prompts[0], prompts[1]: the two iterations; prompts[2]: validation
    cur = Curriculum(StagedSchedule(stages=2, steps_per_stage=1), tokenizer, seed=0)
    torch.manual_seed(0)
    reftune.rl.loop.train_rl(policy, ref, tokenizer, splits["train"], splits["val"], cfg,
                             RunContext(tmp_path, MetricsLogger(tmp_path, tensorboard=False), stage="rl",
                                        eval_batch_size=8), curriculum=cur)

    rl = [r for r in read_metrics(tmp_path) if "reward" in r]
    assert [r["curriculum_stage"] for r in rl] == [0.0, 1.0]
    for r in rl:
        acc_k = {k: v for k, v in r.items() if k.startswith("acc_k/")}
        assert acc_k and all(math.isfinite(v) and 0 <= v <= 1 for v in acc_k.values())
    assert set(rl[1]) >= {"acc_k/0"} and rl[1]["start_k"] == 0.0
    assert rl[0]["start_k"] > 0 and "acc_k/0" not in rl[0]

    G = cfg.num_generations
    for it, stage_k in ((0, lambda ex: len(start_states(ex)) - 1), (1, lambda ex: 0)):  # prompts[2]: validation
        texts, exs = graded[it]
        for j, ex in enumerate(exs[::G]):
            ids, text = encode_start(tokenizer, ex.cot, start_states(ex)[stage_k(ex)])
            assert prompts[it][j] == encode(tokenizer, build_prompt(ex.question, "reft")) + ids
            assert (it == 0) == bool(text) and all(t.startswith(text) for t in texts[j * G:(j + 1) * G])
    saved = load_state(tmp_path / "last")["curriculum"]
    assert saved["schedule"] == "staged" and (saved["state"]["stage"], saved["state"]["stage_start"]) == (1, 1)


@pytest.mark.slow
def test_the_run_passes_the_curriculum_to_rl_and_resumes_its_stage(tokenizer, tmp_path):
    """`reftune run`'s RL stage with curriculum=r3 (staged, 1 iteration per stage): stopped after iteration 1
    and resumed from last/, iteration 2 continues at stage 1 instead of starting the schedule over."""
    from reftune.model.checkpoint import save_checkpoint
    from reftune.train.logger import MetricsLogger, read_metrics
    from reftune.model.modeling import build_tiny_model
    from reftune.commands.common import Run
    from reftune.commands.run import Stages, rl_stage

    save_checkpoint(tmp_path / "warmup", build_tiny_model(tokenizer, 32, 2, 2, 64, 320, seed=0), tokenizer)
    splits = generate_splits(0, {"train": 8, "val": 3})
    overrides = [f"out_dir={tmp_path}", "curriculum=r3", "curriculum.schedule=staged", "curriculum.stages=3",
                 "curriculum.steps_per_stage=1", "rl.prompts_per_step=4", "rl.num_generations=2", "rl.minibatches=2",
                 "rl.max_new_tokens=8", "rl.eval_every=1", "rl.save_every=1", "eval.batch_size=8"]
    logger, stages = MetricsLogger(tmp_path, tensorboard=False), Stages(tmp_path)
    for steps in (1, 2):
        cfg = load_config(RunConfig, None, overrides + [f"rl.steps={steps}"])
        stages.done.pop("reft", None)
        rl_stage(Run(cfg, tmp_path, splits, logger=logger), stages, "reft", splits["train"], tmp_path / "warmup")
    rl = [r for r in read_metrics(tmp_path) if r["stage"] == "reft" and "reward" in r]
    assert [(r["step"], r["curriculum_stage"]) for r in rl] == [(1, 0.0), (2, 1.0)]


@pytest.mark.slow
def test_reftune_run_with_the_adaptive_schedule_logs_and_resumes_it(tmp_path):
    """`reftune run curriculum=r3 curriculum.schedule=adaptive` on the tiny default: the RL records carry the
    per-k accuracy, the mean start k and the adaptive ranges' summary; the ranges are in the resumable state;
    and 2 iterations + resume to 3 equal 3 uninterrupted (the ranges restored, not started over)."""
    from reftune.cli import main
    from reftune.model.checkpoint import load_state
    from reftune.train.logger import read_metrics

    args = ["data.n_train=16", "data.n_val=4", "data.n_test=4", "data.n_extra=0", "data.n_pretrain=0",
            "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
            "model.vocab_size=280", "sft.epochs=1", "warmup_epochs=1", "sft_baseline=false", "sft.batch_size=8",
            "rl.prompts_per_step=4", "rl.num_generations=2", "rl.minibatches=2", "rl.max_new_tokens=12",
            "rl.eval_every=1", "rl.save_every=1", "eval.max_new_tokens=12", "eval.batch_size=8", "report_to=none",
            "curriculum=r3", "curriculum.schedule=adaptive"]

    def reft(out):
        return [{k: v for k, v in r.items() if not k.endswith("_s") and k not in ("time", "tokens_per_s")}
                for r in read_metrics(out) if r["stage"] == "reft" and "reward" in r]

    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["run", f"out_dir={whole}", "rl.steps=3", *args]) == 0
    assert main(["run", f"out_dir={part}", "rl.steps=2", *args]) == 0
    assert main(["run", "--resume", f"out_dir={part}", "rl.steps=3"]) == 0

    records = reft(whole)
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        acc_k = {k: v for k, v in r.items() if k.startswith("acc_k/")}
        assert acc_k and all(0 <= v <= 1 for v in acc_k.values()) and r["start_k"] >= 0
        assert 0 <= r["adaptive_at_question"] <= 1 and r["adaptive_max_k"] >= 0
    ranges = load_state(whole / "reft" / "last")["curriculum"]["state"]["ranges"]
    assert ranges and all(0 <= lo <= hi < n for lo, hi, n in ranges.values())
    assert any((lo, hi) != (0, n - 1) for lo, hi, n in ranges.values())  # visited questions moved
    assert reft(part) == records
    assert load_state(part / "reft" / "last")["curriculum"] == load_state(whole / "reft" / "last")["curriculum"]
