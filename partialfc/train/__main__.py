"""``python -m partialfc.train CONFIG.toml [--section.key value ...]``, with or without torchrun."""

from __future__ import annotations

import sys

from partialfc.train.config import Config
from partialfc.train.runtime import init_runtime, shutdown
from partialfc.train.trainer import Trainer


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print(
            "\nSections and keys: see partialfc/train/config.py or the README's configuration table."
        )
        return 0 if argv else 2
    path, overrides = (None, argv) if argv[0].startswith("--") else (argv[0], argv[1:])
    cfg = Config.load(path, overrides)
    rt = init_runtime()
    try:
        result = Trainer(cfg, rt).fit()
    finally:
        shutdown()
    if rt.is_main:
        state = "stopped by signal" if result["stopped"] else "finished"
        print(f"{state} at step {result['step']}; output in {cfg.train.output_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
