"""Run a test body on W real gloo processes: partialfc's own local launcher."""

from partialfc.distributed.local import run_local as run_ranks

__all__ = ["run_ranks"]
