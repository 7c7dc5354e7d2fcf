"""The README's first command runs `partialfc demo`: it must learn every shard's identities."""

import re
import subprocess
import sys


def test_head_demo_learns_identities_on_two_ranks() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "partialfc",
            "demo",
            "--head-only",
            "--identities",
            "4000",
            "--steps",
            "150",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert "over 2 ranks" in out
    losses = [float(v) for v in re.findall(r"loss\s+([\d.]+)", out)]
    assert losses[-1] < 0.5 * losses[0], out
    accuracy = float(re.search(r"identification accuracy: ([\d.]+)", out).group(1))
    # A shard that learnt nothing (wrong ranges, lost gradients) would cap this near 0.5.
    assert accuracy > 0.9, out


def test_cli_lists_commands_and_rejects_unknown_ones() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "partialfc", "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "demo" in help_text
    bad = subprocess.run(
        [sys.executable, "-m", "partialfc", "nope"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
