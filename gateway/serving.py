"""uvicorn settings shared by ``fonte serve``, the demo and the benchmarks.

uvloop and httptools are dependencies, because uvicorn's pure-Python h11
protocol and the stock asyncio loop took 13 % of the gateway's CPU samples
under load (profile in bench/README.md). uvloop has no Windows build, so
where either package is missing the server falls back to asyncio's loop or
h11 and logs a warning.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable
from typing import TypedDict

log = logging.getLogger("gateway.serving")


class ServerOptions(TypedDict):
    """The ``loop`` and ``http`` arguments of ``uvicorn.run`` and ``uvicorn.Config``."""

    loop: str
    http: str


def uvicorn_options() -> ServerOptions:
    """Return uvicorn's ``loop`` and ``http`` settings: uvloop and httptools when installed."""
    loop = "uvloop" if _installed("uvloop") else "asyncio"
    http = "httptools" if _installed("httptools") else "h11"
    if (loop, http) != ("uvloop", "httptools"):
        log.warning("serving with the %s event loop and the %s HTTP parser, because uvloop or "
                    "httptools is not installed; install both for less CPU per request",
                    loop, http)
    return {"loop": loop, "http": http}


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return uvloop's loop constructor for ``asyncio.Runner``, or None for asyncio's own."""
    if not _installed("uvloop"):
        return None
    import uvloop

    return uvloop.new_event_loop


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
