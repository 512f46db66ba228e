"""The embedded default task: multi-step arithmetic word problems, deterministic by seed.

Each problem follows one *scenario* (shopping, sharing, rates, ages, ...): a start quantity, then 1..N
operations on it, each told in a sentence of the scenario. The answer is the final integer quantity. Every
problem carries both demonstrations the ReFT paper uses:

- N-CoT: one line per step (``12 + 5 = 17``), ending ``The answer is 17``;
- P-CoT: ``def solution():`` with the question as docstring, one statement per step, ``return result``.

Simplifications, on purpose: intermediate values stay in 0..999 and are integers (division is exact),
so a tiny model can learn the arithmetic digit by digit; the language is templated, so the difficulty
lies in reading the numbers into the right operation and in multi-digit arithmetic, which is where a
small model's samples disagree and RL has something to convert.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from reftune.example import Example

NAMES = ["Ava", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena", "Milo",
         "Nora", "Omar", "Pia", "Raj", "Sara", "Tom", "Uma", "Vic", "Wen", "Yara", "Zoe"]


@dataclass(frozen=True)
class Scenario:
    """Sentence templates for one kind of story. `{n}` is the step's number, `{x}` the quantity's noun."""

    name: str
    var: str                     # variable name in the P-CoT program
    nouns: tuple[str, ...]
    start: str
    add: tuple[str, ...]
    sub: tuple[str, ...]
    mul: tuple[str, ...]
    div: tuple[str, ...]
    ask: str


SCENARIOS = [
    Scenario("shopping", "items", ("apples", "pens", "books", "cards", "eggs"),
             "{p} has {n} {x}.",
             ("{p} buys {n} more {x}.", "A friend gives {p} {n} {x}."),
             ("{p} gives away {n} {x}.", "{p} uses {n} of the {x}."),
             ("{p} buys {n} times as many {x} as {p} has now, and keeps only those.",),
             ("{p} splits the {x} into {n} equal bags and keeps one bag.",),
             "How many {x} does {p} have now?"),
    Scenario("sharing", "total", ("sweets", "stickers", "coins", "shells"),
             "A jar holds {n} {x}.",
             ("{p} puts {n} more {x} in the jar.",),
             ("{p} takes {n} {x} out of the jar.",),
             ("The jar is filled until it holds {n} times as many {x}.",),
             ("The {x} are shared equally by {n} children and one share stays in the jar.",),
             "How many {x} are in the jar at the end?"),
    Scenario("rates", "amount", ("liters", "pages", "miles", "bricks"),
             "A machine has made {n} {x} so far.",
             ("It makes {n} more {x} in the next hour.",),
             ("{n} {x} are found to be faulty and removed.",),
             ("By the end of the week the count is {n} times bigger.",),
             ("The {x} are packed into {n} equal boxes and one box is kept.",),
             "How many {x} are kept at the end?"),
    Scenario("ages", "age", ("years",),
             "{p} is {n} {x} old.",
             ("{p}'s aunt is {n} {x} older than that.",),
             ("{p}'s cousin is {n} {x} younger than that.",),
             ("A tree in the garden is {n} times as old as that.",),
             ("A puppy is that age divided by {n}.",),
             "How old is the last one, in {x}?"),
]

OPS = ("add", "sub", "mul", "div")
SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def _pick_step(rng: random.Random, value: int, max_value: int) -> tuple[str, int] | None:
    """An operation and operand that keep the running value an integer in 0..max_value."""
    choices = []
    if value + 2 <= max_value:
        choices.append(("add", rng.randint(2, min(99, max_value - value))))
    if value >= 3:
        choices.append(("sub", rng.randint(1, min(99, value - 1))))
    if 2 <= value and value * 2 <= max_value:
        choices.append(("mul", rng.randint(2, min(9, max_value // value))))
    divisors = [d for d in range(2, 10) if value % d == 0 and value // d >= 1]
    if divisors:
        choices.append(("div", rng.choice(divisors)))
    return rng.choice(choices) if choices else None


def generate_problem(rng: random.Random, min_steps: int, max_steps: int, max_value: int = 999) -> Example:
    """One problem with its N-CoT and P-CoT. The id encodes nothing; uniqueness is by question text."""
    sc = rng.choice(SCENARIOS)
    person, noun = rng.choice(NAMES), rng.choice(sc.nouns)
    n_steps = rng.randint(min_steps, max_steps)
    value = rng.randint(2, 99)
    sentences = [sc.start.format(p=person, n=value, x=noun)]
    nl_lines, program = [], [f"    {sc.var} = {value}"]
    for _ in range(n_steps):
        step = _pick_step(rng, value, max_value)
        if step is None:
            break
        op, n = step
        new = {"add": value + n, "sub": value - n, "mul": value * n, "div": value // n}[op]
        sentences.append(rng.choice(getattr(sc, op)).format(p=person, n=n, x=noun))
        nl_lines.append(f"{value} {SYMBOL[op]} {n} = {new}")
        program.append(f"    {sc.var} = {sc.var} {'//' if op == 'div' else SYMBOL[op]} {n}")
        value = new
    question = " ".join(sentences + [sc.ask.format(p=person, x=noun)])
    cot = "\n".join(nl_lines + [f"The answer is {value}"])
    doc = question.replace('"""', "'''")
    prog = "\n".join(['def solution():', f'    """{doc}"""', *program, f"    result = {sc.var}", "    return result"])
    return Example(id="", question=question, answer=str(value), cot=cot,
                   meta={"program": prog, "steps": len(nl_lines), "scenario": sc.name})


def generate_splits(seed: int, sizes: dict[str, int], min_steps: int = 2, max_steps: int = 4,
                    cot: str = "nl", max_value: int = 999, exclude: set[str] | None = None,
                    steps: dict[str, tuple[int, int]] | None = None) -> dict[str, list[Example]]:
    """Disjoint splits by question text: {split name: examples}, in the order of `sizes`.

    cot: "nl" puts the N-CoT in `Example.cot`, "program" the P-CoT (the other stays in `meta`).
    A split named "extra" is answer-only (cot=None): questions RL may use without rationales.
    exclude: questions that must not appear in any split (e.g. a base model's pretraining corpus).
    steps: per-split (min_steps, max_steps) overriding the common range (e.g. easier pretraining problems).
    """
    if cot not in ("nl", "program"):
        raise ValueError(f"cot must be 'nl' or 'program', got {cot!r}")
    rng = random.Random(seed)
    seen: set[str] = set(exclude or ())
    out: dict[str, list[Example]] = {}
    for split, size in sizes.items():
        examples: list[Example] = []
        attempts = 0
        while len(examples) < size:
            attempts += 1
            if attempts > 50 * size + 1000:
                raise ValueError(f"could not generate {size} distinct problems for split '{split}'")
            lo, hi = (steps or {}).get(split, (min_steps, max_steps))
            ex = generate_problem(rng, lo, hi, max_value)
            if ex.question in seen:
                continue
            seen.add(ex.question)
            ex.id = f"{split}-{len(examples)}"
            ex.meta["nl_cot"] = ex.cot
            if cot == "program":
                ex.cot = ex.meta["program"]
            if split == "extra":
                ex.cot = None
            examples.append(ex)
        out[split] = examples
    return out
