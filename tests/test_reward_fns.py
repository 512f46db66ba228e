"""Specification of `rl.rewards`: the built-in reward functions on hand cases, user functions by import path,
weights, skipped values, the errors that name `rl.rewards`, and the R1 target the SFT stage writes."""

from __future__ import annotations

import pytest
import torch

from reftune.config import RunConfig, load_config, resolve_config_path
from reftune.example import Example
from reftune.errors import ConfigError, UserError
from reftune.model.prompts import build_prompt, build_target
from reftune.rewards.functions import (
    REWARD_FUNCTIONS,
    compute_rewards,
    parse_rewards,
    resolve_rewards,
    reward_metrics,
    script_share,
    soft_overlong_penalty,
)
from reftune.grading.grade import grade, reft_reward

R1 = build_prompt("What is 2 + 2?", "r1")  # ends with "<think>": completions start inside the think block
EX = Example(id="q", question="What is 2 + 2?", answer="4")


def run(name: str, completions: list[str], prompt: str = R1, examples=None, **kw) -> list:
    examples = examples or [EX] * len(completions)
    return REWARD_FUNCTIONS[name]([prompt] * len(completions), completions, examples, **kw)


# --- R1 format ---------------------------------------------------------------------------------------

WELL_FORMED = "\n2 + 2 = 4\n</think>\n<answer>\n4\n</answer>"


def test_the_strict_format_is_the_whole_completion_line_by_line():
    cases = {
        WELL_FORMED: 1.0,
        WELL_FORMED + "\n": 1.0,                                   # one trailing newline is fine
        "\n2 + 2 = 4</think><answer>4</answer>": 0.0,               # tags without their newlines
        WELL_FORMED + "\nmore text": 0.0,                           # text after </answer>
        "<think>\n2 + 2 = 4\n</think>\n<answer>\n4\n</answer>": 0.0,  # repeats the prompt's <think>
        "2 + 2 = 4. The answer is 4": 0.0,
    }
    assert run("r1_format_strict", list(cases)) == list(cases.values())


def test_without_the_tag_in_the_prompt_the_completion_must_open_think_itself():
    prompt = "Question: what is 2 + 2?\n"
    got = run("r1_format_strict", ["<think>" + WELL_FORMED, WELL_FORMED], prompt=prompt)
    assert got == [1.0, 0.0]


def test_the_soft_format_accepts_the_blocks_anywhere_with_any_spacing():
    cases = {
        WELL_FORMED: 1.0,
        "\n2 + 2 = 4</think><answer>4</answer>": 1.0,
        WELL_FORMED + "\nmore text": 1.0,
        "2 + 2 = 4 </think> <answer>4</answer>": 1.0,              # the prompt's <think> counts
        "2 + 2 = 4 <answer>4</answer>": 0.0,                       # thinking never closed
        "2 + 2 = 4\n</think>\nThe answer is 4": 0.0,                 # no answer block
        "<answer>4</answer></think>": 0.0,                         # answer before the end of thinking
    }
    assert run("r1_format_soft", list(cases)) == list(cases.values())
    assert run("r1_format_soft", ["<answer>4</answer>"], prompt="Question:\n") == [0.0]


def test_r1_accuracy_reads_the_number_inside_the_last_answer_block():
    cases = {
        WELL_FORMED: 1.0,
        "</think><answer> 4 apples </answer>": 1.0,
        "</think><answer>4.0</answer>": 1.0,
        "</think><answer>5</answer>": 0.0,
        "</think><answer>5</answer> no wait <answer>\n4\n</answer>": 1.0,  # the last block counts
        "2 + 2 = 4. The answer is 4": 0.0,                              # right, but not in <answer>
        "</think><answer>4": 0.0,                                        # never closed
    }
    assert run("r1_accuracy", list(cases)) == list(cases.values())
    mcq = Example(id="m", question="?", answer="b", answer_type="mcq")
    assert run("r1_accuracy", ["<answer>(B)</answer>", "<answer>c</answer>"], examples=[mcq, mcq]) == [1.0, 0.0]


# --- the task's grader: reft and accuracy ------------------------------------------------------------

def test_reft_and_accuracy_are_the_task_grader_and_the_default_is_unchanged():
    texts = ["2 + 2 = 4\nThe answer is 4", "The answer is 5", "I don't know", "The answer is 4"]
    examples = [EX, EX, EX, Example(id="t", question="?", answer="four", answer_type="text")]
    old = torch.tensor([reft_reward(g, e.answer_type) for g, e in zip(grade(texts, examples), examples)])
    scores, parts, grades = compute_rewards(["Question:\n"] * 4, texts, examples, "reft")
    assert torch.equal(scores, old) and scores.tolist() == pytest.approx([1.0, 0.1, 0.0, 0.0])
    assert parts == {"reft": [1.0, 0.1, 0.0, 0.0]} and [g.correct for g in grades] == [True, False, False, False]
    assert run("accuracy", texts, examples=examples) == [1.0, 0.0, 0.0, 0.0]
    halved = compute_rewards(["Q"] * 4, texts, examples, "reft", correct_reward=0.5, partial_reward=0.0)[0]
    assert halved.tolist() == [0.5, 0.0, 0.0, 0.0]


def test_program_completions_are_run_in_the_sandbox():
    class FakeSandbox:  # the real one is specified in test_sandbox.py
        def run_many(self, programs):
            from types import SimpleNamespace
            return [SimpleNamespace(ok=True, value="4", error=None) for _ in programs]

    got = run("reft", ["def solution():\n    return 4"], cot_kind="program", sandbox=FakeSandbox())
    assert got == [1.0]


# --- language consistency ----------------------------------------------------------------------------

def test_language_consistency_is_the_share_of_the_reasoning_letters_in_the_script():
    assert script_share("abc déf") == 1.0
    assert script_share("ab вг") == 0.5
    assert script_share("ab вг", "cyrillic") == 0.5
    assert script_share("12 + 3 = 15") is None            # digits and symbols are neutral
    got = run("language_consistency", ["\nab вг\n</think>\n<answer>\nпять\n</answer>", "\n1 + 3\n</think>", "abcd"])
    assert got == [0.5, None, 1.0]                         # only the think block counts; no letters: skipped
    assert run("language_consistency", ["вгде"], script="cyrillic") == [1.0]


# --- DAPO's overlong penalty -------------------------------------------------------------------------

def test_the_soft_overlong_penalty_falls_linearly_to_minus_one_at_the_limit():
    assert soft_overlong_penalty([5, 6, 7, 8, 10], max_len=10, cache=4) == [0.0, 0.0, -0.25, -0.5, -1.0]
    scores, parts, _ = compute_rewards(["Q"] * 2, ["The answer is 4", "The answer is 4"], [EX, EX], "reft",
                                       completion_ids=[[1] * 3, [1] * 10], max_new_tokens=10, overlong_penalty=4)
    assert parts["overlong"] == [0.0, -1.0] and scores.tolist() == [1.0, 0.0]


# --- rl.rewards: weights, user functions, skipped values, errors -------------------------------------

def test_the_weighted_functions_are_summed():
    texts = [WELL_FORMED, "\n2 + 2 = 5\n</think>\n<answer>\n5\n</answer>", "nothing"]
    scores, parts, _ = compute_rewards([R1] * 3, texts, [EX] * 3, "r1_format_soft:0.5,r1_accuracy:1")
    assert scores.tolist() == [1.5, 0.5, 0.0]
    assert reward_metrics(parts) == {"reward/r1_format_soft": pytest.approx(2 / 3),
                                     "reward/r1_accuracy": pytest.approx(1 / 3)}


def test_parsing_weights_and_import_paths():
    assert parse_rewards("reft") == [("reft", 1.0)]
    assert parse_rewards("r1_format_soft:0.5, r1_accuracy:1") == [("r1_format_soft", 0.5), ("r1_accuracy", 1.0)]
    assert parse_rewards("my_pkg.mod:fn") == [("my_pkg.mod:fn", 1.0)]
    assert parse_rewards("my_pkg.mod:fn:2.5,reft:-1e-1") == [("my_pkg.mod:fn", 2.5), ("reft", -0.1)]


@pytest.mark.parametrize("spec, message", [
    ("", "empty entry"), ("reft,,accuracy", "empty entry"), ("reft:inf", "bad entry"), (":1", "bad entry"),
    ("reft,reft:2", "twice"), ("nope", "unknown reward function 'nope'"),
    ("reftune_no_such_module:fn", "cannot load"), ("reftune.grading.answers:no_such_fn", "cannot load"),
    ("reftune.grading.answers:DEFAULT_MARKERS", "not a function"),
])
def test_bad_specs_name_the_field(spec, message):
    with pytest.raises(ConfigError, match=f"rl.rewards: .*{message}"):
        resolve_rewards(spec)


def test_a_bad_spec_fails_when_the_config_loads():
    with pytest.raises(ConfigError, match="rl.rewards"):
        load_config(RunConfig, None, ["rl.rewards=reft:0.5,accuracy:x"])


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A reward module written to tmp_path and importable as `reftune_test_user_rewards` (TRL-style signature)."""
    (tmp_path / "reftune_test_user_rewards.py").write_text(
        "def contains_answer(prompts, completions, examples, answer, question, **kw):\n"
        "    assert len(question) == len(completions)\n"
        "    return [None if c == '' else float(a in c) for c, a in zip(completions, answer)]\n"
        "def trl_style(completions, answer, **kwargs):\n"
        "    return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]\n"
        "def broken(prompts, completions, examples, **kw):\n"
        "    return [float('nan')] * len(completions)\n"
        "def short(prompts, completions, examples, **kw):\n"
        "    return [1.0]\n")
    (tmp_path / "reftune_test_failing_import.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "reftune_test_user_rewards"


def test_a_user_function_by_import_path_gets_the_dataset_columns(user_module):
    fns = resolve_rewards(f"{user_module}:contains_answer:2,reft")
    assert [(n, w) for n, w, _ in fns] == [("contains_answer", 2.0), ("reft", 1.0)]
    texts = ["The answer is 4", "", "The answer is 5"]
    scores, parts, _ = compute_rewards(["Q"] * 3, texts, [EX] * 3, fns)
    assert parts["contains_answer"] == [1.0, None, 0.0]
    assert scores.tolist() == pytest.approx([3.0, 0.0, 0.1])   # None counts 0
    metrics = reward_metrics(parts)
    assert metrics["reward/contains_answer"] == 0.5 and metrics["reward/contains_answer/missing"] == pytest.approx(1 / 3)
    assert "reward/reft/missing" not in metrics


def test_a_trl_reward_function_works_unchanged(user_module):
    scores, parts, _ = compute_rewards(["Q"] * 2, ["The answer is 4", "5"], [EX] * 2, f"{user_module}:trl_style")
    assert scores.tolist() == [1.0, 0.0] and list(parts) == ["trl_style"]


def test_user_function_failures_are_user_errors(user_module):
    with pytest.raises(ConfigError, match="rl.rewards: cannot load .*boom at import"):
        resolve_rewards("reftune_test_failing_import:fn")
    with pytest.raises(UserError, match="'broken' returned nan"):
        compute_rewards(["Q"], ["x"], [EX], f"{user_module}:broken")
    with pytest.raises(UserError, match="'short' returned 1 values for 2"):
        compute_rewards(["Q"] * 2, ["x", "y"], [EX] * 2, f"{user_module}:short")


# --- the R1 recipe: SFT target, shipped config --------------------------------------------------------

def test_the_r1_target_is_what_the_r1_rewards_and_the_grader_accept():
    cot = "2 + 2 = 4\nThe answer is 4"
    assert build_target(cot, "reft", "4") == cot
    target = build_target(cot, "r1", "4")
    assert target == "\n2 + 2 = 4\nThe answer is 4\n</think>\n<answer>\n4\n</answer>"
    for name in ("r1_format_strict", "r1_format_soft", "r1_accuracy", "reft"):
        assert run(name, [target]) == [1.0], name
    assert grade([target], [EX])[0].correct


def test_the_shipped_r1_config_loads_by_name():
    assert resolve_config_path("r1").name == "r1.yaml"
    cfg = load_config(RunConfig, "r1")
    assert (cfg.data.template, cfg.rl.advantage, cfg.rl.kl_in, cfg.rl.kl_kind) == ("r1", "grpo", "loss", "k3")
    assert [n for n, _ in parse_rewards(cfg.rl.rewards)] == ["r1_format_soft", "r1_accuracy"]
    with pytest.raises(ConfigError, match="data.template: r1 .*data.cot=nl"):
        load_config(RunConfig, "r1", ["data.cot=program"])
    with pytest.raises(ConfigError, match="config file not found: no_such_config .*r1"):
        load_config(RunConfig, "no_such_config")


def test_r1_compact_is_the_r1_format_after_the_short_prompt():
    prompt = build_prompt("What is 2 + 2?", "r1_compact")
    assert prompt == build_prompt("What is 2 + 2?", "reft") + "<think>"
    target = build_target("2 + 2 = 4\nThe answer is 4", "r1_compact", "4")
    assert target == build_target("2 + 2 = 4\nThe answer is 4", "r1", "4")
    assert REWARD_FUNCTIONS["r1_format_strict"]([prompt], [target], [EX]) == [1.0]
    cfg = load_config(RunConfig, "r1_compact")
    assert (cfg.data.template, cfg.rl.advantage, cfg.rl.rewards) == ("r1_compact", "grpo", "r1_format_soft:0.5,r1_accuracy:1")
