"""uvicorn settings shared by ``fonte serve``, the demo and the benchmarks.

uvloop and httptools are dependencies, because uvicorn's pure-Python h11
protocol and the stock asyncio loop took 13 % of the gateway's CPU samples
under load (profile in bench/README.md). uvloop has no Windows build, so
where either package is missing the server falls back to asyncio's loop or
h11 and logs a warning.

A server process also freezes its objects out of the cyclic garbage
collector once the gateway has started (``tune_garbage_collector``).
"""

from __future__ import annotations

import asyncio
import gc
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


def tune_garbage_collector() -> None:
    """Move the objects of a started gateway out of the garbage collector's walks.

    The schema, the compiled policy, the parsed settings and the imported modules
    live as long as the process. ``gc.freeze`` moves them to a generation that
    later collections do not walk. W2 then took about 5 % less CPU per request
    (bench/README.md). Only server processes call this: it changes the whole
    interpreter, not just the gateway.

    NOTE: the collection thresholds stay CPython's. A young threshold of 20,000
    saved no measurable CPU and, while requests still left reference cycles
    behind, raised the peak RSS of W3 from 148 to 213 MiB. Once they no longer
    did, 7,000 saved nothing beyond the machine's drift either (bench/README.md).
    """
    gc.collect()
    gc.freeze()
    log.debug("garbage collector tuned: %d objects frozen", gc.get_freeze_count())


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return uvloop's loop constructor for ``asyncio.Runner``, or None for asyncio's own."""
    if not _installed("uvloop"):
        return None
    import uvloop

    return uvloop.new_event_loop


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
