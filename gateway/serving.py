"""uvicorn settings shared by ``fonte serve``, the demo and the benchmarks.

uvloop and httptools are dependencies, because uvicorn's pure-Python h11
protocol and the stock asyncio loop took 13 % of the gateway's CPU samples
under load (profile in bench/README.md). uvloop has no Windows build, so
where either package is missing the server falls back to asyncio's loop or
h11 and logs a warning.

A server process also tunes the cyclic garbage collector once the gateway
has started (``tune_garbage_collector``).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
from collections.abc import Callable
from typing import TypedDict

log = logging.getLogger("gateway.serving")

# Allocations minus deallocations of container objects before the youngest
# generation is collected; CPython's default is 700. A W2 request (100
# customers) allocates several thousand dicts and lists, almost all freed by
# reference counting, so the default ran several young collections per request.
GC_YOUNG_THRESHOLD = 20_000


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
    """Freeze the objects of a started gateway and collect young objects less often.

    The schema, the compiled policy, the parsed settings and the imported modules
    live as long as the process. ``gc.freeze`` moves them to a generation that
    later collections do not walk. With both changes, W2 took 5 to 10 % less CPU
    per request in ``bench/run`` conditions (bench/README.md). Only server
    processes call this: it changes the whole interpreter, not just the gateway.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)
    log.debug("garbage collector tuned: %d objects frozen, thresholds %s",
              gc.get_freeze_count(), gc.get_threshold())


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return uvloop's loop constructor for ``asyncio.Runner``, or None for asyncio's own."""
    if not _installed("uvloop"):
        return None
    import uvloop

    return uvloop.new_event_loop


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
