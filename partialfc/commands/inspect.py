"""``partialfc inspect DATASET [--verify]``: summarise an insightface RecordIO set.

The summary (:func:`partialfc.data.inspect.summarize`) reads only record headers; ``--verify``
(:func:`partialfc.data.inspect.verify`) decodes every image and lists each bad record by key and
byte offset; the command then exits 1.
"""

from __future__ import annotations

import argparse

from partialfc.data.inspect import summarize, verify
from partialfc.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the ``inspect`` arguments."""
    parser.add_argument("dataset", help="folder with train.rec, train.idx, property (or a .rec)")
    parser.add_argument(
        "--verify", action="store_true", help="decode every record; report bad ones; exit 1 if any"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes decoding records for --verify"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Runs ``partialfc inspect``; returns 1 when ``--verify`` finds a bad record."""
    if not args.verify:
        print(summarize(args.dataset).format())
        return 0
    try:
        print(summarize(args.dataset).format())
    except ValueError as exc:  # a header too broken to summarise: still verify every record
        print(f"summary unavailable: {exc}")
    problems = 0
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    for problem in verify(args.dataset, progress=not args.no_progress, workers=args.workers):
        problems += 1
        print(f"BAD {problem}")
    print(f"verify: {problems} bad record(s)" if problems else "verify: all records OK")
    return 1 if problems else 0
