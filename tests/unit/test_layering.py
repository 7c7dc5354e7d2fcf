"""The package's layers (DESIGN.md, Layout): no module imports from a layer above its own.

Every ``import`` and ``from ... import`` in the package is checked, at any depth (the lazy imports
inside functions too), relative ones resolved, as are ``importlib.import_module("...")`` calls with
a literal name. A failure names the file, the line and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import partialfc

PACKAGE = Path(partialfc.__file__).resolve().parent

UPPER = ("partialfc.heads", "partialfc.train", "partialfc.commands")
# module prefix -> the packages it must not import
RULES: dict[str, tuple[str, ...]] = {
    "partialfc.margins": UPPER,
    "partialfc.distributed": UPPER,
    "partialfc.optim": UPPER,
    "partialfc.data": UPPER,
    "partialfc.backbones": UPPER,
    "partialfc.eval": UPPER,
    "partialfc.metrics": UPPER,
    # read by the trainer and by eval, export and the converters: below all of them
    "partialfc.checkpoint": UPPER,
    "partialfc.errors": UPPER,
    "partialfc.seeding": UPPER,
    "partialfc.export": ("partialfc.train", "partialfc.commands"),
    "partialfc.legacy": ("partialfc.train", "partialfc.commands"),
    "partialfc.heads": ("partialfc.train", "partialfc.commands"),
    "partialfc.train": ("partialfc.commands",),
}
# The console script's dispatcher is the one module that imports partialfc.commands.
COMMANDS_IMPORTERS = ("partialfc.cli", "partialfc.commands")


def module_name(path: Path, root: Path) -> str:
    """``partialfc.data.packer`` for ``root/data/packer.py`` (``root`` is the package folder)."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str, str]]:
    """``(line, imported module, the import as written)`` for every import in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node.lineno, alias.name, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = ", ".join(a.name for a in node.names)
            written = f"from {'.' * node.level}{node.module or ''} import {names}"
            # `from partialfc import train` imports the package partialfc.train
            found += [(node.lineno, f"{base}.{a.name}", written) for a in node.names]
            found.append((node.lineno, base, written))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value, ast.unparse(node)))
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(root: Path) -> list[str]:
    """``file:line: module imports X (the import)`` for every import breaking :data:`RULES`."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        rule = next((v for k, v in RULES.items() if _within(module, k)), ())
        seen = set()
        imports = sorted(imported_modules(tree, module, path.name == "__init__.py"))
        for line, target, written in imports:
            bad = next((p for p in rule if _within(target, p)), None)
            outside = not any(_within(module, m) for m in COMMANDS_IMPORTERS)
            if bad is None and outside and _within(target, "partialfc.commands"):
                bad = "partialfc.commands"
            if bad is not None and (line, bad) not in seen:
                seen.add((line, bad))
                rel = path.relative_to(root.parent)
                problems.append(f"{rel}:{line}: {module} imports {bad} ({written})")
    return problems


def test_the_package_keeps_its_layers() -> None:
    problems = violations(PACKAGE)
    assert not problems, "upward imports:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("where", "code", "expected"),
    [
        (
            "eval/x.py",
            "def f():\n    from partialfc.train.config import Config\n",
            "partialfc/eval/x.py:2: partialfc.eval.x imports partialfc.train "
            "(from partialfc.train.config import Config)",
        ),
        (
            "data/x.py",
            "import os\nfrom partialfc import heads\n",
            "partialfc/data/x.py:2: partialfc.data.x imports partialfc.heads "
            "(from partialfc import heads)",
        ),
        (
            "eval/sub/y.py",
            "from ...train import trainer\n",
            "partialfc/eval/sub/y.py:1: partialfc.eval.sub.y imports partialfc.train "
            "(from ...train import trainer)",
        ),
        (
            "legacy/z.py",
            "import importlib\nimportlib.import_module('partialfc.train.trainer')\n",
            "partialfc/legacy/z.py:2: partialfc.legacy.z imports partialfc.train "
            "(importlib.import_module('partialfc.train.trainer'))",
        ),
        (
            "train/t.py",
            "import partialfc.commands.pack\n",
            "partialfc/train/t.py:1: partialfc.train.t imports partialfc.commands "
            "(import partialfc.commands.pack)",
        ),
        (
            "export.py",
            "from partialfc.commands import export\n",
            "partialfc/export.py:1: partialfc.export imports partialfc.commands "
            "(from partialfc.commands import export)",
        ),
    ],
)
def test_an_upward_import_is_found(tmp_path: Path, where: str, code: str, expected: str) -> None:
    root = tmp_path / "partialfc"
    (root / where).parent.mkdir(parents=True)
    (root / where).write_text(code)
    (root / "cli.py").write_text("import partialfc.commands.pack\n")  # allowed: the entry point
    (root / "train").mkdir(exist_ok=True)
    (root / "train" / "ok.py").write_text("from partialfc.data import packer\n")  # downward
    assert violations(root) == [expected]
