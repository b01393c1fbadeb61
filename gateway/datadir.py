"""The data folder of one gateway process: created on start, locked while in use.

The SQLite audit store has one writer; two gateways on one folder would
race for the same sequence numbers. The lock is an advisory ``flock`` on
``gateway.lock``, released by the kernel when the process ends, however it
ends.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from gateway.errors import ConfigError

LOCK_NAME = "gateway.lock"


def claim_data_dir(path: Path) -> IO[str]:
    """Create ``path`` if needed and lock it; return the open lock file to keep."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle = (path / LOCK_NAME).open("a+", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot use data dir {str(path)!r}: {exc.strerror}; choose a "
                          "folder the gateway can write") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(f"data dir {str(path)!r} is in use by another gateway process "
                          f"(pid {owner}); give each gateway its own data dir (--data-dir, or "
                          "[gateway] data_dir in the settings file of fonte serve)") from exc
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def check_data_dir_free(path: Path) -> None:
    """Raise ``ConfigError`` when another gateway has locked ``path``.

    Commands call this before their slow start-up work, so that the error is one line
    instead of a failed application start-up. The gateway still takes the lock itself.
    """
    claim_data_dir(path).close()
