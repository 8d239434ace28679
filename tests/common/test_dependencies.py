"""Production dependencies match the code: every third-party module the product imports comes from a
distribution in pyproject.toml's ``dependencies``, and every one listed there is imported.

Test-only libraries (siwe, abnf, m3u8, ...) belong in the ``test`` extra, not in what a node installs.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The folders installed as the streamgate package (setuptools package-dir in pyproject.toml).
PRODUCT = ("streamgate", "edge", "farm", "control", "common")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_normal(re.match(r"[A-Za-z0-9._-]+", spec).group()) for spec in project["dependencies"]}


def imported_modules() -> dict[str, set[str]]:
    """Top-level module name -> the product files that import it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for folder in PRODUCT:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.partition(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def third_party() -> dict[str, set[str]]:
    skip = set(sys.stdlib_module_names) | {"streamgate", "__future__"}
    return {module: files for module, files in imported_modules().items() if module not in skip}


def test_the_walk_sees_the_product_imports() -> None:
    # A guard for the walk itself: modules the product is known to import at run time.
    modules = third_party()
    assert {"aiohttp", "msgspec", "av", "zmq", "requests"} <= modules.keys()


def test_every_imported_module_comes_from_a_declared_distribution() -> None:
    distributions = packages_distributions()
    wanted = declared()
    undeclared = {}
    for module, files in sorted(third_party().items()):
        provided_by = {_normal(d) for d in distributions.get(module, [])}
        assert provided_by, f"{module} (imported by {sorted(files)}) is not installed"
        if not provided_by & wanted:
            undeclared[module] = (sorted(provided_by), sorted(files))
    assert not undeclared, f"imported but not in [project] dependencies: {undeclared}"


def test_every_declared_distribution_is_imported() -> None:
    distributions = packages_distributions()
    used = {_normal(d) for module in third_party() for d in distributions.get(module, [])}
    unused = declared() - used
    assert not unused, f"in [project] dependencies but no product module imports them: {sorted(unused)}"


def test_test_only_libraries_stay_out_of_production() -> None:
    assert not {"siwe", "abnf", "m3u8", "pytest"} & declared()
