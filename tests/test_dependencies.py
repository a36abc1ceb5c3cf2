"""Every third-party module that the package or a job imports (module level or inside a function) comes from
a distribution named in ``[project.dependencies]``: a module that only a test extra (``dev``) brings in would
import fine in CI and fail on a ``make run`` install, in ``cluster/runtime_env.yaml`` and in the image."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "videoalign_ray").rglob("*.py"), *(ROOT / "jobs").glob("*.py")])


def imported_top_modules(path: Path) -> dict[str, int]:
    """The top-level names of every absolute import in ``path`` (nested ones too), with a line of each."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def runtime_distributions() -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in _pyproject()["project"]["dependencies"]}


def test_every_imported_third_party_module_is_a_runtime_dependency():
    runtime = runtime_distributions()
    dists = packages_distributions()
    problems = []
    for path in SOURCES:
        for module, line in imported_top_modules(path).items():
            if module in sys.stdlib_module_names or module == "videoalign_ray" or module == "__future__":
                continue
            owners = {canonicalize_name(d) for d in dists.get(module, [])}
            if not owners:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {module} is not installed at all")
            elif not owners & runtime:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {module} comes from {sorted(owners)}, "
                                "not a runtime dependency")
    assert not problems, "\n".join(problems)


def test_the_check_sees_function_level_imports_and_flags_a_dev_only_module(tmp_path):
    """The rule would pass vacuously if nested imports were missed or if dev extras counted as runtime."""
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef score():\n    from pytest import approx\n    import tenacity.retry\n")
    assert imported_top_modules(f) == {"os": 1, "pytest": 4, "tenacity": 5}
    dev = {canonicalize_name(Requirement(r).name) for r in _pyproject()["project"]["optional-dependencies"]["dev"]}
    assert "pytest" in dev and "pytest" not in runtime_distributions()
