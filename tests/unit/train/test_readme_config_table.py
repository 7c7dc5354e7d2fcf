"""The README's configuration table lists every config field, with its default."""

from pathlib import Path

from partialfc.train import options

README = (Path(__file__).resolve().parents[3] / "README.md").read_text()


def test_every_field_is_documented_with_its_default() -> None:
    for option in options.options():
        row = f"| `{option.name}` | `{option.default!r}` |"
        assert row in README, f"README's configuration table lacks {row}"
