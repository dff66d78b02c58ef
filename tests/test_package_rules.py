"""Workspace rules that hold for every module: the one-way dependency and the public surface."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

APRENDER_SRC = Path(__file__).resolve().parents[1] / "packages" / "aprender" / "src" / "aprender"


def _imported_modules(source: str) -> set[str]:
    """Top-level names of every module imported by `source` (absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_imported_modules_sees_every_import_form() -> None:
    src = "import a.b\nfrom c.d import e\nfrom . import f\nif x:\n    import g\ndef h():\n    from i import j\n"
    assert _imported_modules(src) == {"a", "c", "g", "i"}


def test_aprender_never_imports_entrenar() -> None:
    files = sorted(APRENDER_SRC.rglob("*.py"))
    assert files, "aprender sources not found"
    offenders = [str(f) for f in files if "entrenar" in _imported_modules(f.read_text())]
    assert offenders == [], f"aprender must not import entrenar: {offenders}"


def test_importing_every_aprender_module_loads_no_entrenar() -> None:
    """The same rule at run time, in a clean interpreter: no import path reaches entrenar."""
    import aprender

    modules = [m.name for m in pkgutil.walk_packages(aprender.__path__, "aprender.")]
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "assert not any(k == 'entrenar' or k.startswith('entrenar.') for k in sys.modules), 'entrenar imported'\n"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("package", ["aprender", "entrenar"])
def test_public_names_exist(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__, f"{package} needs a curated __all__"
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.__all__ lists missing name {name}"
