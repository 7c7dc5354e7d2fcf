"""The ``partialfc`` command line: one sub-command per module, each imported only when run.

A sub-command lives in :mod:`partialfc.commands` (argument parsing and printing only; the work is
done by the library modules it calls) and exposes ``configure(parser)`` (adds its arguments) and
``run(args) -> int``. Register a new one by adding a line to ``COMMANDS``. This is the only module
that imports :mod:`partialfc.commands`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from partialfc.errors import debug_requested, run_reporting_user_errors
from partialfc.log import configure_logging

# name -> (module, one-line help). Modules are imported lazily so `partialfc --help` stays fast
# and optional dependencies (DALI, MXNet, ONNX) load only for the command that needs them.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("partialfc.commands.demo", "run the embedded demo (no GPU, no downloads)"),
    "pack": ("partialfc.commands.pack", "pack an image folder or .lst into insightface RecordIO"),
    "inspect": (
        "partialfc.commands.inspect",
        "summarise (and --verify) an insightface RecordIO set",
    ),
    "synth": (
        "partialfc.commands.synth",
        "generate a synthetic face dataset and a verification .bin",
    ),
    "eval": (
        "partialfc.commands.eval",
        "verification accuracy (and VAL@FAR, XNorm) of a checkpoint or ONNX model on .bin sets",
    ),
    "eval-ijb": (
        "partialfc.commands.eval_ijb",
        "IJB-B/C 1:1 TAR@FAR of a checkpoint or an ONNX model (insightface's IJB layout)",
    ),
    "export": (
        "partialfc.commands.export",
        "export a checkpoint's backbone to ONNX or a state_dict",
    ),
    "convert": (
        "partialfc.commands.convert",
        "convert insightface MXNet checkpoints to partialfc (mxnet2torch) and back (torch2mxnet), "
        "and arcface_torch runs to partialfc (arcface-torch)",
    ),
    "subcenter-clean": (
        "partialfc.commands.subcenter_clean",
        "drop the images far from their class's dominant sub-centre (Sub-center ArcFace); write "
        "the cleaned dataset and a K = 1 checkpoint",
    ),
    "import-config": (
        "partialfc.commands.import_config",
        "print an arcface_torch config (configs/NAME.py, read, never executed) as partialfc TOML",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="partialfc", description="Exact sharded margin-softmax training for face recognition."
    )
    from partialfc import __version__

    parser.add_argument("--version", action="version", version=f"partialfc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False).set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known, _ = parser.parse_known_args(argv[:1] or argv)
    module = importlib.import_module(known._module)
    command = argparse.ArgumentParser(
        prog=f"partialfc {known.command}", description=COMMANDS[known.command][1]
    )
    module.configure(command)
    args = command.parse_args(argv[1:])
    configure_logging()  # progress and notes on stderr; a command prints its results on stdout
    # A user error (bad input file, refused output folder) is its one-line message and exit 2.
    return run_reporting_user_errors(
        lambda: int(module.run(args) or 0), debug=debug_requested(argv)
    )


if __name__ == "__main__":
    sys.exit(main())
