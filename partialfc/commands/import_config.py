"""``partialfc import-config arcface_torch CONFIG.py``: an arcface_torch config as partialfc TOML.

The config is read with :mod:`ast`, never executed (:mod:`partialfc.legacy.arcface_config`); the
TOML goes to stdout with a comment for each setting that does not map.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from partialfc.errors import UserError
from partialfc.legacy.arcface_config import read_config, to_partialfc, to_toml


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the ``import-config`` arguments."""
    parser.add_argument("kind", choices=["arcface_torch"], help="the config's origin")
    parser.add_argument("config", type=Path, help="the config file (configs/NAME.py)")
    parser.add_argument(
        "--base", type=Path, help="its configs/base.py (default: beside it, else arcface_torch's)"
    )
    parser.add_argument(
        "--world-size", type=int, default=8, help="GPUs of the arcface_torch run (default 8)"
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``partialfc import-config``: the TOML on stdout."""
    if args.world_size < 1:
        raise UserError(f"--world-size: must be >= 1, got {args.world_size}")
    base_file = args.base or args.config.parent / "base.py"
    base, skipped = {}, []
    if base_file.is_file() and base_file.resolve() != args.config.resolve():
        base, skipped = read_config(base_file)
    values, more = read_config(args.config)
    sections, notes = to_partialfc({**base, **values}, args.world_size, args.config.stem)
    print(to_toml(sections, notes, skipped + more), end="")
    return 0
