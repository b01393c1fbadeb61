"""Secrets named by a settings file: read from the environment or from a file.

A settings file never holds a secret itself: it names an environment
variable (``<name>_env``) or a file (``<name>_file``) that does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError


def read_secret(section: str, table: dict[str, Any], name: str, base: Path) -> str | None:
    """Return the secret ``name`` of a settings section, or None when none is named.

    ``section`` is the label used in messages, such as ``[systems.crm]``;
    ``base`` is the folder relative file names start from.
    """
    if name in table:
        raise ConfigError(f"{section} {name} must not be written in the settings file; set "
                          f"{name}_env to an environment variable or {name}_file to a file")
    variable, file_name = table.get(f"{name}_env"), table.get(f"{name}_file")
    if variable:
        value = os.environ.get(str(variable))
        if not value:
            raise ConfigError(f"{section} {name}_env names {variable!r}, which is not set in "
                              "the environment")
        return value
    if not file_name:
        return None
    path = Path(str(file_name)).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{section} {name}_file {str(file_name)!r} cannot be read: "
                          f"{exc.strerror}") from exc
