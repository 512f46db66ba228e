"""Loading a config: defaults, then a YAML file (a path or a shipped recipe), then `key=value` overrides, each
value checked against its field's type; then the range checks of `config.checks`. Also saving and describing.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from reftune.config.checks import validate
from reftune.config.schema import COMMAND_NAMES, JOBS, RESUMABLE_FIELDS, RESUMABLE_KEYS
from reftune.errors import ConfigError

# PyYAML follows YAML 1.1, where `1e-4` (no dot) is a string; accept it wherever a float is expected.
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value



def _set(obj: Any, dotted: str, value: Any, prefix: str = "") -> None:
    head, _, rest = dotted.partition(".")
    full = f"{prefix}{head}"
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if head not in fields:
        close = difflib.get_close_matches(head, list(fields), n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (valid: {', '.join(fields)})"
        raise ConfigError(f"unknown config field '{full}'{hint}")
    current = getattr(obj, head)
    tp = typing.get_type_hints(type(obj))[head]
    if dataclasses.is_dataclass(current):
        if rest:
            _set(current, rest, value, prefix=f"{full}.")
        elif isinstance(value, dict):
            for k, v in value.items():
                _set(current, str(k), v, prefix=f"{full}.")
        elif "name" in {f.name for f in dataclasses.fields(current)}:
            _set(current, "name", value, prefix=f"{full}.")   # `data=gsm8k` → data.name
        else:
            raise ConfigError(f"{full}: is a section; set its fields, e.g. {full}.<field>=...")
        return
    if rest:
        raise ConfigError(f"'{full}' is not a section, so '{full}.{rest}' does not exist")
    setattr(obj, head, _coerce(value, tp, full))


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` → ("a.b", YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. sft.epochs=3)")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict) and (not raw.lstrip().startswith("{") or all(v is None for v in value.values())):
        value = raw  # "Premise: {premise}" and "{question}" are texts (templates, formats); a mapping is {k: v}
    return key.strip(), value


SHIPPED_CONFIGS = Path(__file__).parent.parent / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """`path` when it is a file, else the shipped config of that name (`-c r1` → reftune/configs/r1.yaml)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = SHIPPED_CONFIGS / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
    if p.parent == Path(".") and shipped.is_file():
        return shipped
    names = ", ".join(sorted(f.stem for f in SHIPPED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"config file not found: {p} (shipped configs: {names or 'none'})")


def _sections(cls: type) -> set[str]:
    """Names of the sections (dataclass-valued fields) of a command's config."""
    cfg = cls()
    return {f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(getattr(cfg, f.name))}


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None):
    """Build `cls` from defaults, then the YAML file, then `key=value` overrides (later wins).

    A config file is a recipe shared by every command: its sections that another command has and `cls` has not
    (e.g. `rl:` read by `reftune sft`) are skipped. Anything else unknown is an error, as in an override.
    """
    cfg = cls()
    others = set().union(*(_sections(job) for job in JOBS)) - _sections(cls)
    if path is not None:
        p = resolve_config_path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:  # PyYAML's message spans several lines; the CLI prints one
            mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None) or str(e)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{p}: not valid YAML{where}: {' '.join(problem.split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping of fields")
        for k, v in data.items():
            if str(k) not in others:
                _set(cfg, str(k), v)
    for text in overrides or []:
        key, value = parse_override(text)
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """The resolved config as YAML, under a comment naming its command (`saved_command` reads it back)."""
    header = f"# reftune {COMMAND_NAMES.get(type(cfg), '?')}\n"
    Path(path).write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False))


def saved_command(path: str | Path) -> str | None:
    """The command whose config `save_config` wrote to `path` (None: none recorded, a run older than the header)."""
    first = Path(path).read_text().split("\n", 1)[0]
    return first.split()[-1] if first.startswith("# reftune ") else None


def leaves(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Every field of a config by dotted name."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out.update(leaves(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else {prefix + f.name: value})
    return out


def resumable(key: str) -> bool:
    """Whether a resumed run may change `key` (see schema.RESUMABLE_FIELDS / RESUMABLE_KEYS)."""
    return key in RESUMABLE_KEYS or ("." in key and key.rsplit(".", 1)[1] in RESUMABLE_FIELDS
                                     and not key.startswith(("data.", "model.", "eval.")))


def resume_config(cls: type, path: str | Path | None, overrides: list[str] | None, saved: str | Path):
    """The config of a run being resumed: the run's saved config (`saved`), with what the user gave now (a -c file,
    key=value overrides) applied only where it may change on resume; any other difference is refused, naming
    the field, its saved value and what may change."""
    saved = Path(saved)
    command = COMMAND_NAMES[cls]
    if (other := saved_command(saved)) not in (None, command):
        raise ConfigError(f"out_dir: {saved.parent} is a `reftune {other}` run; `reftune {command} --resume` cannot "
                          f"continue it (use another out_dir)")
    try:
        base = load_config(cls, saved)
    except ConfigError as e:
        raise ConfigError(f"out_dir: {saved} is not a `reftune {command}` config ({e}); use another out_dir") from None
    asked = load_config(cls, path, overrides)
    before, after = leaves(base), leaves(asked)
    given = [parse_override(o)[0] for o in overrides or []]
    if path is not None:
        given += list(leaves_of_yaml(resolve_config_path(path)))
    for key in sorted({k for g in given for k in before if k == g or k.startswith(g + ".")}):
        if before[key] == after[key]:
            continue
        if not resumable(key):
            raise ConfigError(f"{key}: the run in {saved.parent} was started with {key}={before[key]!r}; --resume "
                              f"continues it as it was (a resumed run may change only learning rates, "
                              f"epochs/steps, patience and eval/save intervals); use a new out_dir to change it")
        _set(base, key, after[key])
    validate(base)
    return base


def leaves_of_yaml(path: Path) -> list[str]:
    """The dotted keys a YAML config file sets."""
    def walk(d: Any, prefix: str) -> list[str]:
        if not isinstance(d, dict):
            return [prefix[:-1]]
        return [k for key, v in d.items() for k in walk(v, f"{prefix}{key}.")]
    return walk(yaml.safe_load(path.read_text()) or {}, "")


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted field, default, doc) for every field: the config reference in the README."""
    rows = []
    inst = cls()
    for f in dataclasses.fields(cls):
        value = getattr(inst, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe(type(value), prefix=f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", repr(value), f.metadata.get("doc", "")))
    return rows
