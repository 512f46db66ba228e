"""R^3: reverse-curriculum RL from intermediate states of the demonstrations (Xi et al., 2024).

Outcome rewards are sparse on long chains: a wrong step anywhere gives the same 0 as a wrong step at the
start. R^3 lets the policy start from a *prefix* of a demonstration and write only the rest, so the reward
tells it about the last steps first; the start moves back towards the plain question over training.

- `split_steps` cuts a demonstration into steps; `"".join(steps) == cot` exactly (each separator stays
  attached to the step it ends), so every start state is a real prefix of the demonstration.
- `start_states` are the prefixes made of the first k steps, k = 0..K-1 (K steps): k = 0 is the plain
  question (as at evaluation), and the full demonstration is *not* a start state: the policy always
  writes at least the last step, the one that states the answer, so every rollout earns its reward.
- Schedules choose k: `StagedSchedule` (M stages from k = K-1, next to the answer, back to k = 0, by a
  fixed number of iterations or when the stage's train accuracy reaches a threshold), `MixedSchedule`
  (all start states at once, as the R^3 release trains) and `AdaptiveSchedule` (per question, from that
  question's own results: AdaBack, Amani et al., 2025).
- `Curriculum` is what the RL loop talks to: it turns a batch of questions into start states (token ids
  to append to the prompt, and the text the response completes), and records the accuracy per k.

Simplifications: K and the stage are per demonstration, so a batch at stage s mixes absolute k's (stage s
maps each demonstration's own K onto it); `MixedSchedule` draws k uniformly per chosen question, so each
question is seen equally often, where the release pools all (question, k) pairs, so questions with more
steps are seen more often. Questions without a demonstration always start at k = 0.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal, Sequence

from reftune.example import Example
from reftune.errors import UserError

SplitKind = Literal["auto", "nl", "program", "tokens"]
AccuracyByK = dict[int, tuple[float, int]]   # k -> (accuracy, number of samples)
Visits = Sequence[tuple[str, int, float]]     # one per question of an iteration: (key, k, accuracy of its samples)


# --- steps and start states ----------------------------------------------------------------------------

def _lines(text: str) -> list[str]:
    """Lines with their newline kept; "".join(_lines(t)) == t."""
    return re.findall(r"[^\n]*\n|[^\n]+", text)


def _split_lines(cot: str) -> list[str]:
    """N-CoT: one step per non-blank line; blank lines go with the step above (leading ones with the first)."""
    steps: list[str] = []
    for line in _lines(cot):
        if steps and (not line.strip() or not steps[-1].strip()):
            steps[-1] += line
        else:
            steps.append(line)
    return steps


_DOCSTRING_OPEN = re.compile(r"[rRuU]?(\"\"\"|''')")
_CONTINUES = re.compile(r"[)\]}]|(else|elif|except|finally)\b")


def _split_program(cot: str) -> list[str]:
    """P-CoT: one step per statement of the function body; the head (everything up to and including the
    `def` line and its docstring) is glued to the first statement, so k = 1 already holds one computation.

    A statement is a line at the body's indentation; deeper-indented lines (block bodies, continuation
    lines), blank lines and lines opening with a closing bracket or `else`/`elif`/`except`/`finally` belong
    to the statement above. Text without a `def` line is split as N-CoT.
    """
    lines = _lines(cot)
    d = next((i for i, line in enumerate(lines) if line.lstrip().startswith("def ")), None)
    if d is None:
        return _split_lines(cot)
    end = d + 1
    j = end
    while j < len(lines) and not lines[j].strip():
        j += 1
    m = _DOCSTRING_OPEN.match(lines[j].strip()) if j < len(lines) else None
    if m:
        quote, rest = m.group(1), lines[j].strip()[m.end():]
        close = j if quote in rest else next((i for i in range(j + 1, len(lines)) if quote in lines[i]), len(lines) - 1)
        end = close + 1
    head, body = "".join(lines[:end]), lines[end:]
    content = [line for line in body if line.strip()]
    base = len(content[0]) - len(content[0].lstrip(" \t")) if content else 0
    steps: list[str] = []
    for line in body:
        stripped = line.strip()
        part_of_previous = (not stripped or len(line) - len(line.lstrip(" \t")) > base
                            or _CONTINUES.match(stripped) is not None)
        if steps and (part_of_previous or not steps[-1].strip()):
            steps[-1] += line
        else:
            steps.append(line)
    if not steps:
        return [head]
    steps[0] = head + steps[0]
    return steps


def _token_ends(tokenizer, text: str) -> list[int]:
    """End character offset of each token of `text` (a fast tokenizer's offset mapping)."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise UserError("curriculum.split=tokens needs a fast (Rust) tokenizer, for its offset mapping") from None
    return [end for _, end in enc["offset_mapping"]]


def _split_tokens(cot: str, tokenizer, n_chunks: int) -> list[str]:
    """About `n_chunks` pieces of equal token count, cut at token boundaries."""
    ends = _token_ends(tokenizer, cot)
    n = len(ends)
    if n == 0:
        return [cot] if cot else []
    chunks = min(n_chunks, n)
    cuts = sorted({ends[round(i * n / chunks) - 1] for i in range(1, chunks)} - {0, len(cot)})
    bounds = [0, *cuts, len(cot)]
    return [cot[a:b] for a, b in zip(bounds, bounds[1:])]


def resolve_kind(cot: str, kind: SplitKind) -> str:
    """"auto": "program" when the demonstration defines a function, else "nl"."""
    if kind != "auto":
        return kind
    return "program" if re.search(r"^[ \t]*def \w+\(", cot, re.M) else "nl"


def split_steps(cot: str, kind: SplitKind = "auto", tokenizer=None, n_token_chunks: int = 8) -> list[str]:
    """The demonstration's steps; "".join(steps) == cot. kind: auto | nl | program | tokens.

    nl: a step per line (with its newline and any blank lines after it); program: a step per statement of
    the function, the `def` line and docstring glued to the first (see `_split_program`); tokens:
    `n_token_chunks` chunks of equal token count (needs `tokenizer`).
    """
    kind = resolve_kind(cot, kind)
    if kind == "nl":
        return _split_lines(cot)
    if kind == "program":
        return _split_program(cot)
    if kind == "tokens":
        if tokenizer is None:
            raise ValueError("split kind 'tokens' needs a tokenizer")
        return _split_tokens(cot, tokenizer, n_token_chunks)
    raise ValueError(f"unknown split kind {kind!r} (valid: auto, nl, program, tokens)")


def start_states(example: Example, kind: SplitKind = "auto", tokenizer=None, n_token_chunks: int = 8) -> list[str]:
    """Prefixes of the demonstration made of its first k steps, k = 0..K-1: state k is the text the policy
    continues after the prompt. The whole demonstration is never a start state (something is always left to
    write). Without a demonstration: [""] (the plain question only)."""
    if not example.cot:
        return [""]
    steps = split_steps(example.cot, kind, tokenizer, n_token_chunks)
    return ["".join(steps[:k]) for k in range(max(1, len(steps)))]


def encode_start(tokenizer, cot: str, prefix: str) -> tuple[list[int], str]:
    """(token ids, text) of a start state, taken from the tokenisation of the *whole* demonstration.

    SFT saw encode(prompt) + encode(cot) (`batching.encode_sft`); appending these ids to encode(prompt)
    gives the policy exactly the tokens it learned, where encoding the prefix string on its own could
    tokenise its end differently (e.g. "\\n" followed by indentation is one token for byte-level BPE). The
    ids are the cot's tokens that end within `prefix`; text is the cot up to the last of them (a token
    straddling the cut is left for the policy to write).
    """
    if not prefix:
        return [], ""
    ids = tokenizer(cot, add_special_tokens=False)["input_ids"]
    ends = _token_ends(tokenizer, cot)
    n = 0
    while n < len(ids) and ends[n] <= len(prefix):
        n += 1
    return ids[:n], cot[:ends[n - 1]] if n else ""


# --- schedules -------------------------------------------------------------------------------------------

class MixedSchedule:
    """Every start state of a demonstration equally likely, from the first iteration (the R^3 release)."""

    name = "mixed"

    def sample(self, num_states: int, rng: random.Random, key: str = "") -> int:
        return rng.randrange(num_states)

    def update(self, step: int, accuracy_by_k: AccuracyByK, visits: Visits = ()) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class StagedSchedule:
    """M stages; stage s (0-based) starts a demonstration with K steps at k = round((K-1)·(M-1-s)/(M-1)):
    stage 0 next to the answer (k = K-1), the last stage from the plain question (k = 0), where it stays.

    Advancing: after `steps_per_stage` iterations; or, with `advance_accuracy`, once the mean train accuracy
    of the stage's last `window` iterations reaches it (then `steps_per_stage` > 0 caps a stage's length).
    """

    name = "staged"

    def __init__(self, stages: int, steps_per_stage: int = 0, advance_accuracy: float | None = None, window: int = 3):
        if stages < 1:
            raise ValueError("stages must be ≥ 1")
        if advance_accuracy is None and steps_per_stage <= 0:
            raise ValueError("a staged schedule needs steps_per_stage > 0 or advance_accuracy")
        self.stages, self.steps_per_stage = stages, steps_per_stage
        self.advance_accuracy, self.window = advance_accuracy, window
        self.stage, self.stage_start, self.recent = 0, 0, []

    def start(self, num_states: int) -> int:
        """k of the current stage for a demonstration with `num_states` start states (K)."""
        if self.stages == 1:
            return 0
        return round((num_states - 1) * (self.stages - 1 - self.stage) / (self.stages - 1))

    def sample(self, num_states: int, rng: random.Random, key: str = "") -> int:
        return self.start(num_states)

    def update(self, step: int, accuracy_by_k: AccuracyByK, visits: Visits = ()) -> dict[str, float]:
        """step: iterations finished (the one just done included). Returns {"curriculum_stage": stage used}."""
        used = self.stage
        n = sum(count for _, count in accuracy_by_k.values())
        if n:
            self.recent = (self.recent + [sum(acc * count for acc, count in accuracy_by_k.values()) / n])[-self.window:]
        in_stage = step - self.stage_start
        if self.stage < self.stages - 1:
            if self.advance_accuracy is None:
                advance = in_stage >= self.steps_per_stage
            else:
                running = sum(self.recent) / len(self.recent) if len(self.recent) >= self.window else 0.0
                reached = running >= self.advance_accuracy
                advance = reached or 0 < self.steps_per_stage <= in_stage
            if advance:
                self.stage, self.stage_start, self.recent = self.stage + 1, step, []
        return {"curriculum_stage": float(used)}

    def state_dict(self) -> dict:
        return {"stage": self.stage, "stage_start": self.stage_start, "recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.stage, self.stage_start, self.recent = state["stage"], state["stage_start"], list(state["recent"])


class AdaptiveSchedule:
    """AdaBack (Amani et al., 2025, arXiv 2506.18110): each question has its own range [lo, hi] of k (steps
    given), first [0, K-1]. Each time the question is drawn, k is uniform in its range, and r, the share of its
    samples graded correct, moves the range:

    - r ≥ threshold (the policy finishes the chain from k): hi = max(k - 1, 0): fewer steps given from now on;
    - r < threshold: lo = min(k + 1, K - 1): more steps given;
    where that leaves lo > hi, the other end follows (lo = hi after a success, hi = lo after a failure).

    While the range is wider than one k this is the paper's stochastic bisection for the supervision at which
    the question is solved `threshold` of the time. Once it is one k wide it is a staircase, one step fewer after
    a success and one more after a failure, so it keeps following the policy as it learns (the paper's
    interval only shrinks). A question not drawn yet has the full range: its first draw is the mixed schedule's.

    Simplifications: k counts whole steps (the paper reveals a ratio of the tokens); r is the grader's verdict,
    as `acc_k` is, not the summed reward (partial or format rewards do not move the range); only the latest
    visit counts. Questions with one start state (no demonstration) are not tracked.
    """

    name = "adaptive"

    def __init__(self, threshold: float = 0.5):
        if not 0 < threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")
        self.threshold = threshold
        self.ranges: dict[str, list[int]] = {}   # question key -> [lo, hi, K]

    def sample(self, num_states: int, rng: random.Random, key: str = "") -> int:
        if num_states < 2:
            return 0
        lo, hi, _ = self.ranges.setdefault(key, [0, num_states - 1, num_states])
        return rng.randint(lo, hi)

    def move(self, key: str, k: int, accuracy: float) -> None:
        """The update rule above, for one visit of question `key` started at k."""
        if key not in self.ranges:
            return
        lo, hi, num_states = self.ranges[key]
        if accuracy >= self.threshold:
            hi = max(k - 1, 0)
            lo = min(lo, hi)
        else:
            lo = min(k + 1, num_states - 1)
            hi = max(hi, lo)
        self.ranges[key] = [lo, hi, num_states]

    def update(self, step: int, accuracy_by_k: AccuracyByK, visits: Visits = ()) -> dict[str, float]:
        """Moves each visited question's range; returns the mean upper end over the questions seen so far
        (`adaptive_max_k`) and the share of them now started from the plain question (`adaptive_at_question`)."""
        for key, k, accuracy in visits:
            self.move(key, k, accuracy)
        if not self.ranges:
            return {}
        his = [hi for _, hi, _ in self.ranges.values()]
        return {"adaptive_max_k": sum(his) / len(his), "adaptive_at_question": sum(h == 0 for h in his) / len(his)}

    def state_dict(self) -> dict:
        return {"ranges": {key: list(r) for key, r in self.ranges.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.ranges = {key: list(r) for key, r in state["ranges"].items()}


# --- what the RL loop uses -------------------------------------------------------------------------------

def _tally(groups: list, correct: list[bool]) -> dict:
    """group -> [correct, total] over samples, in order of first appearance."""
    out: dict = {}
    for g, ok in zip(groups, correct):
        t = out.setdefault(g, [0, 0])
        t[0], t[1] = t[0] + int(ok), t[1] + 1
    return out


@dataclass
class Start:
    """A question's start state: k steps given; ids to append to the prompt's ids; text they decode to; the
    question's id (the adaptive schedule's key)."""

    k: int
    ids: list[int]
    text: str
    key: str = ""


class Curriculum:
    """Start states for RL rollouts under a schedule; deterministic given (seed, step), so resumable."""

    def __init__(self, schedule, tokenizer, split: SplitKind = "auto", token_chunks: int = 8, seed: int = 0):
        self.schedule, self.tokenizer = schedule, tokenizer
        self.split, self.token_chunks, self.seed = split, token_chunks, seed
        self._states: dict[str, list[str]] = {}

    def states(self, example: Example) -> list[str]:
        if not example.cot:
            return [""]
        if example.cot not in self._states:
            self._states[example.cot] = start_states(example, self.split, self.tokenizer, self.token_chunks)
        return self._states[example.cot]

    def choose(self, examples: list[Example], step: int) -> list[Start]:
        """One start state per question of iteration `step` (0-based)."""
        rng = random.Random(self.seed * 1_000_003 + step)
        starts = []
        for e in examples:
            states = self.states(e)
            k = self.schedule.sample(len(states), rng, e.id)
            ids, text = encode_start(self.tokenizer, e.cot, states[k]) if k else ([], "")
            starts.append(Start(k, ids, text, e.id))
        return starts

    @staticmethod
    def complete(starts: list[Start], responses: list[str], group: int) -> list[str]:
        """The full solutions to grade: start text + response (response i belongs to start i // group)."""
        return [starts[i // group].text + r for i, r in enumerate(responses)]

    def update(self, step: int, ks: list[int], correct: list[bool], keys: list[str] | None = None) -> dict[str, float]:
        """Record one iteration (ks, correct and keys, the question ids: per sample); returns metrics:
        `acc_k/<k>`, mean `start_k`, and the schedule's own (the stage; the adaptive ranges)."""
        by_k, by_question = _tally(ks, correct), _tally(list(zip(keys, ks)) if keys else [], correct)
        accuracy_by_k = {k: (c / n, n) for k, (c, n) in sorted(by_k.items())}
        visits = [(key, k, c / n) for (key, k), (c, n) in by_question.items()]
        metrics = {f"acc_k/{k}": acc for k, (acc, _) in accuracy_by_k.items()}
        metrics["start_k"] = sum(ks) / max(1, len(ks))
        return {**metrics, **self.schedule.update(step, accuracy_by_k, visits)}

    def state_dict(self) -> dict:
        return {"schedule": self.schedule.name, "state": self.schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state["schedule"] != self.schedule.name:
            raise UserError(f"curriculum.schedule: the run being resumed used '{state['schedule']}', "
                            f"not '{self.schedule.name}'")
        self.schedule.load_state_dict(state["state"])


def from_config(cfg, tokenizer, seed: int = 0) -> Curriculum | None:
    """The `Curriculum` for a `CurriculumConfig`, or None when curriculum.name is "none"."""
    if cfg.name == "none":
        return None
    if cfg.schedule == "mixed":
        schedule = MixedSchedule()
    elif cfg.schedule == "adaptive":
        schedule = AdaptiveSchedule(cfg.adaptive_threshold)
    else:
        schedule = StagedSchedule(cfg.stages, cfg.steps_per_stage, cfg.advance_accuracy)
    return Curriculum(schedule, tokenizer, cfg.split, cfg.token_chunks, seed)
