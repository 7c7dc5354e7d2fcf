"""``python -m partialfc.train CONFIG.toml [--section.key value ...]``, with or without torchrun.

Exit status: 0 when training finished; 143 (128 + SIGTERM, "terminated") when SIGTERM or SIGINT
stopped it early, after the checkpoint of the step reached was written, so that a Kubernetes Job
or torchrun sees an unfinished run (and restarts it, resuming from that checkpoint) instead of a
completed one.
"""

from __future__ import annotations

import sys

from partialfc.errors import debug_requested, run_reporting_user_errors
from partialfc.train.config import Config
from partialfc.train.runtime import init_runtime, shutdown
from partialfc.train.trainer import Trainer

STOPPED_EARLY = 143


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # A user error (config, dataset, busy metrics port) is one line and exit 2, no traceback.
    args = [a for a in argv if a != "--verbose"]
    return run_reporting_user_errors(lambda: _train(args), debug=debug_requested(argv))


def _train(argv: list[str]) -> int:
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
    return STOPPED_EARLY if result["stopped"] else 0


if __name__ == "__main__":
    sys.exit(main())
