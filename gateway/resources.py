"""Where the shipped declarations live, in a checkout and in an installed package.

In a source checkout ``schema/`` and ``policies/`` sit beside the package. A
wheel installs copies under ``<prefix>/share/fonte/`` (see
``[tool.setuptools.data-files]`` in pyproject.toml).
"""

from __future__ import annotations

import sys
from pathlib import Path


def shipped_dir(name: str) -> Path:
    """Return the shipped folder ``name`` (``schema`` or ``policies``)."""
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    installed = Path(sys.prefix) / "share" / "fonte" / name
    if installed.is_dir():
        return installed
    return checkout
