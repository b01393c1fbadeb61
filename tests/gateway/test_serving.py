"""uvicorn runs on uvloop and httptools when they are installed; servers freeze the GC."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys

import pytest
import uvloop

from gateway import serving


def test_uvicorn_options_installed() -> None:
    assert serving.uvicorn_options() == {"loop": "uvloop", "http": "httptools"}


def test_uvicorn_options_fallback(monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(serving, "_installed", lambda module: module != "uvloop")
    with caplog.at_level(logging.WARNING, logger="gateway.serving"):
        options = serving.uvicorn_options()
    assert options == {"loop": "asyncio", "http": "httptools"}
    assert len(caplog.records) == 1
    assert "install both" in caplog.records[0].getMessage()


def test_event_loop_factory_uvloop() -> None:
    factory = serving.event_loop_factory()
    assert factory is not None
    with asyncio.Runner(loop_factory=factory) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)


def test_event_loop_factory_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "_installed", lambda module: False)
    assert serving.event_loop_factory() is None


def test_tune_garbage_collector() -> None:
    # In a child process: the settings belong to the whole interpreter.
    script = ("import gc, json\n"
              "from gateway import serving\n"
              "before = gc.get_threshold()\n"
              "serving.tune_garbage_collector()\n"
              "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))\n")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               check=True, timeout=60)
    before, after, frozen = json.loads(completed.stdout)

    assert after == before
    assert frozen > 1000  # at least the imported modules' objects
