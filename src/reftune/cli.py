"""The `reftune` command: `run` (the whole method), `sft`, `rl`, `eval`, `verifier`, `rm`, `selftrain` (one stage
each), `config`.

Each command takes an optional YAML config (`-c FILE`) and `key=value` overrides, e.g.
    reftune run out_dir=runs/a rl.kl_coef=0.05
    reftune eval model.name_or_path=runs/a/reft/best eval.split=test
User errors print one line and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys

from reftune.config import EvalJob, RLJob, RMJob, RunConfig, SelfTrainJob, SFTJob, VerifierJob, describe, load_config
from reftune.errors import UserError

COMMANDS = {"run": RunConfig, "sft": SFTJob, "rl": RLJob, "eval": EvalJob, "verifier": VerifierJob, "rm": RMJob,
            "selftrain": SelfTrainJob}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reftune", description="Reinforced fine-tuning of causal LMs (ReFT, GRPO, R^3).")
    sub = p.add_subparsers(dest="command", required=True)
    for name, cls in COMMANDS.items():
        s = sub.add_parser(name, help=(cls.__doc__ or "").strip().splitlines()[0])
        s.add_argument("-c", "--config", help="YAML config file")
        s.add_argument("--model", help="shorthand for model.name_or_path=...")
        s.add_argument("--resume", action="store_true", help="continue the run in out_dir from its checkpoints")
        s.add_argument("--skip-invalid", action="store_true", help="skip malformed data records (counted in the log)")
        s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sft.epochs=3")
    c = sub.add_parser("config", help="print every field of a command's config with its default and doc")
    c.add_argument("which", choices=list(COMMANDS), nargs="?", default="run")
    c.add_argument("--markdown", action="store_true", help="print a markdown table (the docs' config reference)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # key=value may also come after flags (`--resume a=b`)
    if args.command != "config":
        bad = [e for e in extra if e.startswith("-") or "=" not in e]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "config":
        rows = describe(COMMANDS[args.which])
        if args.markdown:
            print("| field | default | meaning |\n|---|---|---|")
        for key, default, text in rows:
            print(f"| `{key}` | `{default}` | {text} |" if args.markdown else f"{key:28} {default:14} {text}")
        return 0
    try:
        overrides = list(args.overrides) + ([f"model.name_or_path={args.model}"] if args.model else [])
        overrides += ["data.skip_invalid=true"] if args.skip_invalid else []
        cfg = load_config(COMMANDS[args.command], args.config, overrides)
        from reftune import stages  # heavy imports (torch, transformers) only after the config is valid
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()  # reftune shows its own bars; HF's (one per checkpoint save) interleave
        result = getattr(stages, args.command)(cfg, resume=args.resume)
    except UserError as e:
        print(f"reftune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reftune {args.command}: interrupted; continue with --resume", file=sys.stderr)
        return 130
    if isinstance(result, dict):
        import json
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
