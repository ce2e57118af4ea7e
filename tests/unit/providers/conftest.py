"""Shared setup for the provider tests: make the ``signing`` helpers importable in any import mode."""

from __future__ import annotations

import sys
from pathlib import Path

# pytest's default "prepend" import mode puts this folder on sys.path already; "importlib" mode does not.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
