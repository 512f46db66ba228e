"""Prompt templates, in one place. A template turns a question into the text the model continues.

Presets:
- ``reft``: the ReFT release format ``Question:\\n{question}\\nAnswer reasoning:\\n`` (N-CoT and P-CoT alike).
- ``chat``: the model's own chat template (instruct models such as SmolLM2-Instruct), the question as the
  user turn with an instruction to end with "The answer is N".
- ``r1``: the DeepSeek-R1 format, reasoning in ``<think>…</think>`` then ``<answer>…</answer>``.
- ``r1_compact``: the same output format after the short ``reft`` prompt (no instruction paragraph), for
  small models pretrained on the ``reft`` prompt: the R1 instruction costs a tiny tokenizer ~100 tokens and
  pushes every sequence past the positions such a base was trained on.

Custom templates (`data.template`): a text with ``{question}`` (a typed ``\\n`` is a newline), or a file
holding one (plain text, or YAML ``{prompt, system, chat}``), with an optional system prompt
(`data.system_prompt`) and, with `data.chat`, put through the tokenizer's chat template as the user turn. The
config check (`configure_template`) registers the resolved template under the `data.template` string, so every
stage that is handed that string (SFT targets, rollouts, evaluation, scorers) prompts the same way.
Simplification: one process holds one custom template per string, the one of the config loaded last (a CLI
command loads one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reftune.errors import ConfigError


@dataclass(frozen=True)
class Template:
    """How a question becomes a prompt. `chat` templates go through the tokenizer's chat template."""

    text: str
    chat: bool = False
    think: bool = False  # the prompt ends inside "<think>": targets close it and add "<answer>" (R1 format)
    system: str | None = None  # a system prompt: the system turn (chat), else the prompt's first paragraph


TEMPLATES: dict[str, Template] = {
    "reft": Template("Question:\n{question}\nAnswer reasoning:\n"),
    "chat": Template("{question}\nReason step by step, then finish with: The answer is <number>.", chat=True),
    "r1": Template(
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "The assistant first thinks about the reasoning process and then provides the answer, enclosed in "
        "<think> </think> and <answer> </answer> tags.\nUser: {question}\nAssistant: <think>", think=True),
    "r1_compact": Template("Question:\n{question}\nAnswer reasoning:\n<think>", think=True),
}


_CUSTOM: dict[str, Template] = {}  # data.template string -> its resolved custom template (`configure_template`)
TEMPLATE_FILES = (".txt", ".yaml", ".yml", ".json", ".jinja")


def _checked(text: str, field: str = "data.template") -> str:
    if "{question}" not in text:
        raise ConfigError(f"{field}: a custom template needs the placeholder {{question}} (got {text[:60]!r})")
    try:
        text.format(question="")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"{field}: only {{question}} may appear in braces (write a literal brace as {{{{ or }}}}); "
                          f"bad placeholder {e}") from None
    return text


def _from_file(path: Path) -> Template:
    """A template file: plain text with {question}, or YAML/JSON {prompt, system, chat}."""
    import yaml
    if not path.is_file():
        raise ConfigError(f"data.template: no template file {path}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml", ".json"):
        spec = yaml.safe_load(text)
        if not isinstance(spec, dict) or not isinstance(spec.get("prompt"), str):
            raise ConfigError(f"data.template: {path} must hold a mapping with a 'prompt' text (and optional "
                              f"'system', 'chat')")
        unknown = set(spec) - {"prompt", "system", "chat"}
        if unknown:
            raise ConfigError(f"data.template: {path} has unknown keys {sorted(unknown)} (valid: prompt, system, chat)")
        return Template(_checked(spec["prompt"]), chat=bool(spec.get("chat", False)), system=spec.get("system"))
    return Template(_checked(text))


def parse_template(spec: str, system_prompt: str | None = None, chat: bool | None = None) -> Template:
    """The template `data.template` names: a preset, a text with {question}, or a file (see the module docstring);
    system_prompt and chat (`data.system_prompt`, `data.chat`) override a custom template's own."""
    if spec in TEMPLATES:
        if system_prompt is not None or chat is not None:
            raise ConfigError(f"data.system_prompt / data.chat: apply to a custom data.template, not the preset "
                              f"'{spec}'; write the text, e.g. data.template='{{question}}' data.chat=true")
        return TEMPLATES[spec]
    if "{question}" in spec:
        tpl = Template(_checked(unescape(spec)))
    elif spec.endswith(TEMPLATE_FILES) or Path(spec).expanduser().is_file():
        tpl = _from_file(Path(spec).expanduser())
    else:
        raise ConfigError(f"data.template: unknown template '{spec}' (a preset: {', '.join(TEMPLATES)}; a text with "
                          f"{{question}}; or a template file)")
    return Template(tpl.text, chat=tpl.chat if chat is None else chat,
                    system=tpl.system if system_prompt is None else unescape(system_prompt))


def unescape(text: str) -> str:
    """"\\n" and "\\t" typed in a shell argument (data.template='Q: {question}\\nA:') as the characters they name."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def configure_template(spec: str, system_prompt: str | None = None, chat: bool | None = None) -> Template:
    """Resolve `data.template` and register a custom one under its string, so `get_template(spec)` returns it."""
    tpl = parse_template(spec, system_prompt, chat)
    if spec not in TEMPLATES:
        _CUSTOM[spec] = tpl
    return tpl


def get_template(name: str) -> Template:
    """A preset, the custom template registered for `name` (`configure_template`), or `name` parsed as one."""
    if name in TEMPLATES:
        return TEMPLATES[name]
    return _CUSTOM.get(name) or parse_template(name)


def build_prompt(question: str, template: str | Template, tokenizer=None) -> str:
    """The prompt text for one question; chat templates need the tokenizer."""
    tpl = get_template(template) if isinstance(template, str) else template
    body = tpl.text.format(question=question)
    if not tpl.chat:
        return body if tpl.system is None else f"{tpl.system}\n\n{body}"
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError("data.template: a chat template needs a tokenizer with a chat template (an instruct "
                          "model); the tiny default has none")
    return tokenizer.apply_chat_template(prompt_messages(question, tpl), tokenize=False, add_generation_prompt=True)


def prompt_messages(question: str, template: str | Template) -> list[dict[str, str]]:
    """The chat messages a chat template puts through the tokenizer: an optional system turn, then the user turn
    (TRL's conversational prompt format)."""
    tpl = get_template(template) if isinstance(template, str) else template
    messages = [{"role": "system", "content": tpl.system}] if tpl.system is not None else []
    return messages + [{"role": "user", "content": tpl.text.format(question=question)}]


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
