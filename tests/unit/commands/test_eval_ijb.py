"""``partialfc eval-ijb`` option parsing."""

from __future__ import annotations

import pytest

from partialfc.commands.eval_ijb import _protocols
from partialfc.errors import ConfigError


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["1:1"], ("1:1",)),
        (["1:N"], ("1:N",)),
        (["1:1,1:n"], ("1:1", "1:N")),
        (["1n", "11"], ("1:N", "1:1")),
    ],
)
def test_protocol_option(values: list[str], expected: tuple[str, ...]) -> None:
    assert _protocols(values) == expected


def test_protocol_option_refuses_others() -> None:
    with pytest.raises(ConfigError, match="--protocol must be 1:1 or 1:N, got '1:2'"):
        _protocols(["1:1", "1:2"])
