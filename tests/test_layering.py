"""The layering, checked on every ``make test`` (issue #14, item 5).

ruff lints every file (``[tool.ruff]``). import-linter enforces the contracts in pyproject.toml (``[tool.importlinter]``): ``models/`` builds
networks with torch and imports no pipeline, engine or storage code; ``curation/``, ``training/``
and ``models/`` never import ``flows/``; ``training/`` reads curated data through curation's
storage, shard and gate modules only; no import cycles between the modules of a package. What it
cannot see is checked here too: no package imports another package's private (``_``) names.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("curation", "training", "models", "flows")


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "4 kept" in proc.stdout, proc.stdout[-2000:]


def test_ruff_finds_nothing():
    """Undefined and unused names, syntax errors, mutable defaults, unsorted imports
    (``[tool.ruff]`` in pyproject.toml): ``ruff check --fix`` repairs most of what this reports."""
    ruff = Path(sys.executable).with_name("ruff")
    proc = subprocess.run([str(ruff), "check", "--no-cache", str(ROOT)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def private_imports_across_packages(path: Path, package: str, root: Path = ROOT) -> list[str]:
    """``from <other package>... import _name`` in one source file of ``package``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = node.module.split(".")
            top = names[1] if names[0] == "reelflow" and len(names) > 1 else names[0]
            if top in PACKAGES and top != package:
                out += [f"{path.relative_to(root)}:{node.lineno} imports {node.module}.{a.name}"
                        for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return out


def test_no_package_imports_another_packages_private_names():
    found = [hit for pkg in PACKAGES for path in sorted((ROOT / pkg).rglob("*.py"))
             for hit in private_imports_across_packages(path, pkg)]
    assert not found, "\n".join(found)


def test_the_private_name_check_can_fail(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from reelflow.curation.report import _e, CSS\nfrom reelflow.training.report import _own\n")
    assert private_imports_across_packages(probe, "training", root=tmp_path) == [
        "probe.py:1 imports reelflow.curation.report._e"]
