"""Prompt templates, in one place. A template turns a question into the text the model continues.

Presets:
- ``reft``: the ReFT release format ``Question:\\n{question}\\nAnswer reasoning:\\n`` (N-CoT and P-CoT alike).
- ``chat``: the model's own chat template (instruct models such as SmolLM2-Instruct), the question as the
  user turn with an instruction to end with "The answer is N".
- ``r1``: the DeepSeek-R1 format, reasoning in ``<think>…</think>`` then ``<answer>…</answer>``.
- ``r1_compact``: the same output format after the short ``reft`` prompt (no instruction paragraph), for
  small models pretrained on the ``reft`` prompt: the R1 instruction costs a tiny tokenizer ~100 tokens and
  pushes every sequence past the positions such a base was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from reftune.errors import ConfigError


@dataclass(frozen=True)
class Template:
    """How a question becomes a prompt. `chat` templates go through the tokenizer's chat template."""

    text: str
    chat: bool = False
    think: bool = False  # the prompt ends inside "<think>": targets close it and add "<answer>" (R1 format)


TEMPLATES: dict[str, Template] = {
    "reft": Template("Question:\n{question}\nAnswer reasoning:\n"),
    "chat": Template("{question}\nReason step by step, then finish with: The answer is <number>.", chat=True),
    "r1": Template(
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "The assistant first thinks about the reasoning process and then provides the answer, enclosed in "
        "<think> </think> and <answer> </answer> tags.\nUser: {question}\nAssistant: <think>", think=True),
    "r1_compact": Template("Question:\n{question}\nAnswer reasoning:\n<think>", think=True),
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ConfigError(f"data.template: unknown template '{name}' (valid: {', '.join(TEMPLATES)})")
    return TEMPLATES[name]


def build_prompt(question: str, template: str | Template, tokenizer=None) -> str:
    """The prompt text for one question; chat templates need the tokenizer."""
    tpl = get_template(template) if isinstance(template, str) else template
    body = tpl.text.format(question=question)
    if not tpl.chat:
        return body
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError("data.template: 'chat' needs a tokenizer with a chat template (an instruct model)")
    messages = [{"role": "user", "content": body}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_target(cot: str, template: str | Template, answer: str | None = None) -> str:
    """The SFT target for a demonstration `cot` under `template`: the cot itself, except for the R1 templates.

    r1, r1_compact (`Template.think`): the prompt ends inside ``<think>``, so the target closes the think block and states the answer,
    ``"\\n{cot}\\n</think>\\n<answer>\\n{answer}\\n</answer>"`` (the R1 format `r1_format_strict` checks).
    The cot keeps its own final-answer line ("The answer is N"), which greedy evaluation reads.
    """
    tpl = get_template(template) if isinstance(template, str) else template
    if not tpl.think:
        return cot
    if answer is None:
        raise ValueError("the r1 target needs the answer")
    return f"\n{cot.strip()}\n</think>\n<answer>\n{answer}\n</answer>"
