"""``python -m partialfc.train CONFIG.toml [--section.key value ...]``, with or without torchrun.

usage: python -m partialfc.train [CONFIG.toml] [options] [--section.key VALUE ...]

Options of the trainer (anywhere on the line):
  -h, --help         this text and every config option (below), then exit 0
  --check            run the preflight checks only: print the run it would start (exit 0) or
                     one line per problem (exit 2); nothing is written
  --world-size N     with --check: the number of ranks the run will have (default: WORLD_SIZE or 1)
  --local-ranks N    with --check: processes per node whose metrics ports must be free (default N)
  --no-lock-check    with --check: skip the output_dir lock (multi-node launchers: the run's own
                     rank 0 may already hold it)
  --log-all-ranks    every rank logs its INFO lines (also [metrics] log_all_ranks); by default
                     rank 0 does, and the other ranks log warnings and errors only
  --verbose          tracebacks for user errors too (also PARTIALFC_DEBUG=1)

Exit status: 0 when training finished (or --check passed); 2 for a user error (a config field, a
path, a dataset, a busy port or output_dir, a streak of non-finite steps), printed once as one line
per problem; 143 (128 + SIGTERM, "terminated") when SIGTERM or SIGINT stopped it early, after the
checkpoint of the step reached was written, so that a Kubernetes Job or torchrun sees an unfinished
run (and restarts it, resuming from that checkpoint) instead of a completed one.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys

from partialfc.errors import ConfigError, debug_requested, run_reporting_user_errors
from partialfc.log import configure_logging
from partialfc.train.config import Config

log = logging.getLogger("partialfc.train")
STOPPED_EARLY = 143
_FLAGS = ("--check", "--verbose", "--no-lock-check", "--log-all-ranks")
_VALUED = ("--world-size", "--local-ranks")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # usage, and where the rest is
        print(__doc__.strip())
        print("\n--help also lists every config option, with its type, default and meaning.")
        return 2
    if "-h" in argv or "--help" in argv:
        from partialfc.train.options import help_text

        print(__doc__.strip(), help_text(), sep="\n\n")
        return 0
    rank = int(os.environ["RANK"]) if "RANK" in os.environ else None
    configure_logging(rank, all_ranks="--log-all-ranks" in argv)
    return run_reporting_user_errors(lambda: _main(argv), debug=debug_requested(argv), rank=rank)


def _split_options(argv: list[str]) -> tuple[dict[str, str | bool], list[str]]:
    """Our own options out of ``argv``; the rest is ``[CONFIG] --section.key value ...``."""
    options: dict[str, str | bool] = {}
    rest, items = [], list(argv)
    while items:
        arg = items.pop(0)
        name, eq, value = arg.partition("=")
        if arg in _FLAGS:
            options[arg] = True
        elif name in _VALUED:
            if not eq:
                if not items:
                    raise ConfigError(f"{name} needs a value")
                value = items.pop(0)
            options[name] = value
        elif arg.startswith("--") and "." not in name:  # --chek: not a --section.key either
            close = difflib.get_close_matches(name, _FLAGS + _VALUED, n=1)
            hint = f"did you mean {close[0]}?" if close else "see --help"
            raise ConfigError(f"{name}: unknown option; {hint}")
        else:
            rest.append(arg)
    return options, rest


def _int_option(options: dict, name: str, default: int) -> int:
    value = options.get(name, default)
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
    return number


def _main(argv: list[str]) -> int:
    from partialfc.train import preflight

    options, argv = _split_options(argv)
    path, overrides = (None, argv) if not argv or argv[0].startswith("--") else (argv[0], argv[1:])
    cfg = Config.load(path, overrides)
    if cfg.metrics.log_all_ranks:
        configure_logging(all_ranks=True)
    if options.get("--check"):
        world = _int_option(options, "--world-size", int(os.environ.get("WORLD_SIZE", "1")))
        local = _int_option(options, "--local-ranks", world)
        pf = preflight.check(
            cfg, world, local_ranks=range(local), check_lock=not options.get("--no-lock-check")
        )
        print(pf.summary())
        print("preflight: OK")
        return 0
    # Every process checks before the process group forms; the lock is rank 0's (below), and each
    # rank's metrics port is found busy when the trainer binds it, first thing.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    preflight.check(cfg, world, local_ranks=range(0), check_lock=False)
    return _train(cfg)


def _train(cfg: Config) -> int:
    from partialfc.distributed import leave_together
    from partialfc.train.lock import hold_run_lock
    from partialfc.train.runtime import init_runtime, shutdown
    from partialfc.train.trainer import Trainer

    rt = init_runtime()
    try:
        with hold_run_lock(cfg.train.output_dir, rt):
            result = Trainer(cfg, rt).fit()
        leave_together()  # no rank closes its sockets while a peer finishes the last collective
    finally:
        shutdown()
    state = "stopped by signal" if result["stopped"] else "finished"
    log.info("%s at step %d; output in %s", state, result["step"], cfg.train.output_dir)
    return STOPPED_EARLY if result["stopped"] else 0


if __name__ == "__main__":
    sys.exit(main())
