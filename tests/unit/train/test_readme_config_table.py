"""The README's configuration table lists every config field, with its default."""

import dataclasses
import typing
from pathlib import Path

from partialfc.train import config

README = (Path(__file__).resolve().parents[3] / "README.md").read_text()


def test_every_field_is_documented_with_its_default() -> None:
    for section in config._SECTIONS:
        section_type = typing.get_type_hints(config.Config)[section]
        for f in dataclasses.fields(section_type):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            row = f"| `{section}.{f.name}` | `{default!r}` |"
            assert row in README, f"README's configuration table lacks {row}"
