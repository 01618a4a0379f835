"""Make the repository root importable when the project is not installed.

``pyproject.toml`` sets no ``pythonpath`` for pytest and these test directories
have no ``__init__.py``, so without an (editable) install ``import protocol``
would fail under ``.venv/bin/pytest``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("protocol") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
