"""``partialfc configs [NAME]``: the shipped run configs, also from an installed wheel.

Without NAME, each shipped config's name and where it lies; with NAME, its TOML on stdout, to
start a run's own file from (``partialfc configs ms1mv3_r50 > my_run.toml``).
"""

from __future__ import annotations

import argparse

from partialfc import configs


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the ``configs`` arguments."""
    parser.add_argument("name", nargs="?", help="print this shipped config (e.g. ms1mv3_r50)")


def run(args: argparse.Namespace) -> int:
    """Runs ``partialfc configs``."""
    if args.name is not None:
        print(configs.read_text(args.name), end="")
        return 0
    for name in configs.names():
        with configs.as_file(name) as path:
            print(f"{name:<20} {path}")
    return 0
