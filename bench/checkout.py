"""Import this before ``reelflow``: a bench script then runs from a checkout where reelflow is not
installed (a borrowed GPU machine's system Python, say). The packages sit at the repo root and
install as ``reelflow.<name>`` (pyproject.toml); without an installation, ``reelflow`` is made a
namespace over the repo root here."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _installed() -> bool:
    try:
        spec = importlib.util.find_spec("reelflow.curation")
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None and Path(spec.origin).exists()


if not _installed():
    sys.modules.pop("reelflow", None)
    package = types.ModuleType("reelflow")
    package.__path__ = [str(ROOT)]  # reelflow.curation -> ROOT/curation, and so on
    sys.modules["reelflow"] = package
