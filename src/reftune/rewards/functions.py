"""Reward functions by name, and the weighted sum the RL loop trains on (`rl.rewards`).

A reward function scores a batch of completions:

    fn(prompts: list[str], completions: list[str], examples: list[Example], **kw) -> list[float | None]

one value per completion; None means "does not apply" (e.g. no script letters to judge): it counts 0 in the
weighted sum and is logged as missing. In the spirit of TRL's reward functions, the dataset columns come as
keyword lists too (`question=[...]`, `answer=[...]`, `answer_type=[...]`), along with the run's settings
(`cot_kind`, `sandbox`, `template`, `correct_reward`, `partial_reward`), the sampled token ids
(`completion_ids`), the task's own grades (`grades`, see `reftune.grading.grade.grade`) and the trained reward model
of `rl.reward_model` (`reward_scorer`, None without one). Everything is passed
by keyword, as TRL does, so a function takes `**kw` and ignores what it does not use: a TRL reward function
such as `def score(completions, answer, **kwargs)` works unchanged. As in TRL:
- every other column of the user's data (an example's meta: the record keys no field mapping took, e.g.
  `solution`) comes by its own name, one value per completion (None where an example lacks it); `cot` too;
- under a chat template (`data.chat`, the `chat` preset) a user function gets conversational data:
  `prompts[i]` = [{"role": "system"/"user", "content": ...}], `completions[i]` = [{"role": "assistant",
  "content": text}] (so `c[0]["content"]` works). Built-ins and `register_reward` functions get plain text.
`check_reward_args` names, before training, a required argument of a user function the data cannot supply.

Built-ins (`REWARD_FUNCTIONS`):
- reft: 1 correct / `partial_reward` (0.1) wrong extracted number / 0 no answer (ReFT; P-CoT programs run
  in the sandbox when cot_kind="program");
- accuracy: 1 correct / 0 otherwise, same grading;
- r1_format_strict, r1_format_soft, r1_accuracy: the DeepSeek-R1 format and answer checks;
- language_consistency: share of the reasoning's letters written in one script (latin by default);
- reward_model: the score of a trained reward model (`rl.reward_model`): P(correct) in [0, 1] from a
  `reftune verifier` checkpoint, the unbounded Bradley-Terry score from a `reftune rm` one (in (0, 1) with
  `rl.reward_model_sigmoid`). Sum it with a rule-based reward: "reft:1,reward_model:0.5".

`rl.rewards` names them with optional weights, "r1_format_soft:0.5,r1_accuracy:1", or points at a user
function by import path, "my_pkg.rewards:score" (weight optional: "my_pkg.rewards:score:2").
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import re
import unicodedata
from typing import Callable

from reftune.grading.answers import answers_match, extract_answer
from reftune.example import Example
from reftune.errors import ConfigError, UserError
from reftune.grading.grade import Grade, grade, reft_reward
from reftune.model.prompts import get_template, prompt_messages

RewardFn = Callable[..., list]
REWARD_FUNCTIONS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make `fn` available in `rl.rewards` as `name`. Raises ValueError on a duplicate name."""

    def register(fn: RewardFn) -> RewardFn:
        if name in REWARD_FUNCTIONS:
            raise ValueError(f"reward function {name!r} is already registered")
        REWARD_FUNCTIONS[name] = fn
        return fn

    return register


def _grades(completions, examples, kw) -> list[Grade]:
    """The task's grades, reused from `kw["grades"]` when the caller already computed them (no second sandbox run)."""
    if kw.get("grades") is not None:
        return kw["grades"]
    return grade(completions, examples, kw.get("cot_kind", "nl"), kw.get("sandbox"))


@register_reward("reft")
def reft(prompts, completions, examples, **kw) -> list[float]:
    """ReFT's outcome reward: correct_reward (1) / partial_reward (0.1) for a wrong extracted number / 0."""
    correct, partial = kw.get("correct_reward", 1.0), kw.get("partial_reward", 0.1)
    grades = _grades(completions, examples, kw)
    return [reft_reward(g, e.answer_type, correct, partial) for g, e in zip(grades, examples)]


@register_reward("accuracy")
def accuracy(prompts, completions, examples, **kw) -> list[float]:
    """1 when the task's grader finds the right answer (anchored marker, or the program's return value), else 0."""
    return [float(g.correct) for g in _grades(completions, examples, kw)]


# --- DeepSeek-R1 format ------------------------------------------------------------------------------
# The r1 prompt ends with "<think>", so the model's completion starts *inside* the think block. The format
# checks read the completion with that opening tag put back (when its prompt ends with it), as the model
# "wrote" it; a completion that repeats the tag itself then has two and fails the strict check.

THINK_OPEN = "<think>"
_STRICT = re.compile(r"<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>\n?", re.DOTALL)
_SOFT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def with_opening_tag(prompt: str, completion: str) -> str:
    """The completion with "<think>" put back in front when its prompt ended with that tag."""
    return THINK_OPEN + completion if prompt.rstrip().endswith(THINK_OPEN) else completion


@register_reward("r1_format_strict")
def r1_format_strict(prompts, completions, examples, **kw) -> list[float]:
    """1 when the whole completion is "<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>" (one trailing newline
    allowed), each tag exactly once; else 0."""
    out = []
    for p, c in zip(prompts, completions):
        text = with_opening_tag(p, c)
        once = all(text.count(tag) == 1 for tag in ("<think>", "</think>", "<answer>", "</answer>"))
        out.append(float(once and _STRICT.fullmatch(text) is not None))
    return out


@register_reward("r1_format_soft")
def r1_format_soft(prompts, completions, examples, **kw) -> list[float]:
    """1 when "<think>...</think>" then "<answer>...</answer>" appear anywhere (any whitespace between); else 0."""
    return [float(_SOFT.search(with_opening_tag(p, c)) is not None) for p, c in zip(prompts, completions)]


def answer_tag_content(text: str) -> str | None:
    """The content of the last closed <answer>...</answer>, or None."""
    found = _ANSWER.findall(text)
    return found[-1] if found else None


@register_reward("r1_accuracy")
def r1_accuracy(prompts, completions, examples, **kw) -> list[float]:
    """1 when the content of the last <answer>...</answer> is the gold answer, else 0 (also without the tag).

    The content is read by `reftune.grading.answers` as if it followed a final-answer marker, so for numeric answers
    the first number inside counts ("<answer> 42 apples </answer>" → 42); mcq reads a letter, text the content.
    """
    out = []
    for c, e in zip(completions, examples):
        content = answer_tag_content(c)
        pred = None
        if content is not None:
            pred = extract_answer("<answer> " + " ".join(content.split()), e.answer_type, markers=("<answer>",))
        out.append(float(answers_match(pred, e.answer, e.answer_type, options=e.meta.get("options"))))
    return out


# --- language consistency ----------------------------------------------------------------------------

def reasoning_text(prompt: str, completion: str) -> str:
    """The chain of thought: the think block when there is one (r1 format), else the whole completion."""
    text = with_opening_tag(prompt, completion)
    if THINK_OPEN in text:
        return text.split(THINK_OPEN, 1)[1].split("</think>", 1)[0]
    return completion


def script_share(text: str, script: str = "latin") -> float | None:
    """Share of the letters of `text` whose Unicode name starts with `script` ("latin", "cyrillic", "greek",
    "cjk", "arabic", "hangul", "hiragana", ...); None when there is no letter (digits and symbols are neutral)."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return None
    prefix = script.upper()
    return sum(unicodedata.name(ch, "").startswith(prefix) for ch in letters) / len(letters)


@register_reward("language_consistency")
def language_consistency(prompts, completions, examples, *, script: str = "latin", **kw) -> list[float | None]:
    """DeepSeek-R1's language-consistency reward: the share of the reasoning's letters in the target `script`.

    None (skipped) for a reasoning without letters. Another script: register a partial, e.g.
    `register_reward("lc_cyrillic")(functools.partial(language_consistency, script="cyrillic"))`.
    """
    return [script_share(reasoning_text(p, c), script) for p, c in zip(prompts, completions)]


# --- a trained reward model --------------------------------------------------------------------------

NO_REWARD_MODEL = ("rl.rewards: 'reward_model' needs rl.reward_model=CKPT (a `reftune verifier` or `reftune rm` "
                   "checkpoint)")


@register_reward("reward_model")
def reward_model(prompts, completions, examples, *, reward_scorer=None, **kw) -> list[float]:
    """The trained reward model's score of each (full prompt text, completion): `kw["reward_scorer"]`, which the
    RL loop builds once from `rl.reward_model` (`reftune.rewards.scorer.load_reward_scorer`)."""
    if reward_scorer is None:
        raise ConfigError(NO_REWARD_MODEL)
    return [float(v) for v in reward_scorer(prompts, completions)]


# --- DAPO's soft overlong punishment -----------------------------------------------------------------

def soft_overlong_penalty(lengths: list[int], max_len: int, cache: int) -> list[float]:
    """DAPO's soft overlong punishment: 0 up to max_len - cache tokens, then linear down to -1 at max_len.

    penalty(L) = min(0, (max_len - cache - L) / cache). lengths count every sampled token (EOS included), so a
    response cut at max_new_tokens gets -1.
    """
    return [min(0.0, (max_len - cache - n) / cache) for n in lengths]


# --- `rl.rewards`: parsing, resolving, summing ---------------------------------------------------------

def _load_user_fn(path: str) -> RewardFn:
    module, _, name = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except Exception as e:  # noqa: BLE001 - any import-time failure is the user's to fix
        raise ConfigError(f"rl.rewards: cannot load reward function '{path}': {type(e).__name__}: {e}") from None
    if not callable(fn):
        raise ConfigError(f"rl.rewards: '{path}' is not a function")
    return fn


def parse_rewards(spec: str) -> list[tuple[str, float]]:
    """"a:0.5,b" → [("a", 0.5), ("b", 1.0)]; "pkg.mod:fn:2" → [("pkg.mod:fn", 2.0)]. Names are not checked here.

    The weight is the text after the last ":" when it is a number; otherwise the whole item is the name.
    """
    pairs = []
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            raise ConfigError(f"rl.rewards: empty entry in {spec!r}; write e.g. 'reft' or "
                              f"'r1_format_soft:0.5,r1_accuracy:1'")
        name, weight = item, 1.0
        head, sep, tail = item.rpartition(":")
        if sep:
            try:
                weight = float(tail)
                name = head
            except ValueError:
                pass
        if not name or not math.isfinite(weight):
            raise ConfigError(f"rl.rewards: bad entry {item!r}; write name or name:weight")
        pairs.append((name.strip(), weight))
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ConfigError(f"rl.rewards: a reward function is listed twice in {spec!r}")
    return pairs


def resolve_rewards(spec: str) -> list[tuple[str, float, RewardFn]]:
    """(log name, weight, function) for each entry of `rl.rewards`; a user function logs under its own name."""
    out = []
    for name, weight in parse_rewards(spec):
        if name in REWARD_FUNCTIONS:
            out.append((name, weight, REWARD_FUNCTIONS[name]))
        elif ":" in name:
            out.append((name.rpartition(":")[2], weight, _load_user_fn(name)))
        else:
            raise ConfigError(f"rl.rewards: unknown reward function '{name}' (built-in: "
                              f"{', '.join(REWARD_FUNCTIONS)}; or a user function as 'module:function')")
    if len({n for n, _, _ in out}) != len(out):
        raise ConfigError(f"rl.rewards: two reward functions would be logged under the same name in {spec!r}")
    return out


# the keyword arguments every reward function gets besides the data's own columns (`data_columns`)
RUN_KWARGS = ("prompts", "completions", "examples", "question", "answer", "answer_type", "cot", "grades", "cot_kind",
              "sandbox", "template", "correct_reward", "partial_reward", "completion_ids", "reward_scorer")


def data_columns(examples: list[Example]) -> dict[str, list]:
    """Every column of the data that is not a run keyword (an example's meta keys), by name: one value per example,
    None where an example lacks it."""
    names = dict.fromkeys(k for e in examples for k in e.meta if k not in RUN_KWARGS)
    return {name: [e.meta.get(name) for e in examples] for name in names}


def is_user_function(fn: RewardFn) -> bool:
    """A function given by import path in `rl.rewards` (not a built-in or `register_reward` one)."""
    return all(fn is not f for f in REWARD_FUNCTIONS.values())


def check_reward_args(reward_fns: str | list[tuple[str, float, RewardFn]], examples: list[Example]) -> None:
    """Raise a one-line ConfigError when a reward function requires an argument that neither the run
    (`RUN_KWARGS`) nor the data's columns (`data_columns` of `examples`) supply."""
    fns = resolve_rewards(reward_fns) if isinstance(reward_fns, str) else reward_fns
    available = set(RUN_KWARGS) | set(data_columns(examples))
    for name, _, fn in fns:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # a builtin or C function: nothing to inspect
            continue
        for p in params:
            required = p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            if required and p.name not in available:
                columns = ", ".join(sorted(set(available) - set(RUN_KWARGS))) or "none"
                raise ConfigError(f"rl.rewards: reward function '{name}' requires argument '{p.name}', which the "
                                  f"data does not supply (its extra columns: {columns}); add the column, map it "
                                  f"(data.fields.*), or give the argument a default")


def _conversational(prompts: list[str], completions: list[str], examples: list[Example], template: str):
    """TRL's conversational form of a chat template's batch: message lists per prompt and per completion."""
    return ([prompt_messages(e.question, template) for e in examples],
            [[{"role": "assistant", "content": c}] for c in completions])


def compute_rewards(prompts: list[str], completions: list[str], examples: list[Example],
                    reward_fns: str | list[tuple[str, float, RewardFn]], *, cot: str = "nl", sandbox=None,
                    template: str = "reft", correct_reward: float = 1.0, partial_reward: float = 0.1,
                    completion_ids: list[list[int]] | None = None, max_new_tokens: int | None = None,
                    overlong_penalty: int | None = None,
                    reward_scorer=None) -> tuple["torch.Tensor", dict[str, list], list[Grade]]:
    """Score every completion: scores [B] = sum_k weight_k * fn_k (None counts 0), plus the parts and grades.

    reward_fns: the `rl.rewards` string or its `resolve_rewards` result. The task's grades are computed once
    (the "accuracy" log) and passed to every function as `grades`. overlong_penalty (DAPO, with
    completion_ids and max_new_tokens) adds the part "overlong" with weight 1, see `soft_overlong_penalty`.
    reward_scorer: (prompts, completions) → scores of a trained reward model, for the "reward_model" function.
    Returns (scores float32 [B], {name: per-completion values}, grades).
    """
    import torch  # here, not at the top: config validation imports this module and must stay light

    fns = resolve_rewards(reward_fns) if isinstance(reward_fns, str) else reward_fns
    grades = grade(completions, examples, cot, sandbox)
    kw = {**data_columns(examples), "question": [e.question for e in examples], "answer": [e.answer for e in examples],
          "answer_type": [e.answer_type for e in examples], "cot": [e.cot for e in examples], "grades": grades,
          "cot_kind": cot, "sandbox": sandbox, "template": template, "correct_reward": correct_reward,
          "partial_reward": partial_reward, "completion_ids": completion_ids, "reward_scorer": reward_scorer}
    chat = get_template(template).chat
    scores = [0.0] * len(completions)
    parts: dict[str, list] = {}
    for name, weight, fn in fns:
        p, c = (_conversational(prompts, completions, examples, template) if chat and is_user_function(fn)
                else (prompts, completions))
        values = list(fn(prompts=p, completions=c, examples=examples, **kw))
        if len(values) != len(completions):
            raise UserError(f"rl.rewards: reward function '{name}' returned {len(values)} values for "
                            f"{len(completions)} completions")
        for i, v in enumerate(values):
            if v is None:
                continue
            if not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise UserError(f"rl.rewards: reward function '{name}' returned {v!r}; "
                                f"expected a finite number or None")
            scores[i] += weight * float(v)
        parts[name] = values
    if overlong_penalty:
        if completion_ids is None or max_new_tokens is None:
            raise ValueError("overlong_penalty needs completion_ids and max_new_tokens")
        parts["overlong"] = soft_overlong_penalty([len(c) for c in completion_ids], max_new_tokens, overlong_penalty)
        scores = [s + p for s, p in zip(scores, parts["overlong"])]
    return torch.tensor(scores, dtype=torch.float32), parts, grades


def reward_metrics(parts: dict[str, list]) -> dict[str, float]:
    """`reward/<name>`: mean over the completions it scored; `reward/<name>/missing`: share skipped (None), when any."""
    out = {}
    for name, values in parts.items():
        given = [v for v in values if v is not None]
        if given:
            out[f"reward/{name}"] = sum(given) / len(given)
        if len(given) < len(values):
            out[f"reward/{name}/missing"] = 1 - len(given) / len(values)
    return out
