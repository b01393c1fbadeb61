"""Start the SAP CAP test server of this folder on loopback, seeded from the demo data.

The server is a Node.js process (``cds-serve`` of ``@sap/cds``) that serves
the CDS model in ``db/`` and ``srv/``: the SAP names as OData 2.0 and 4.0 and
the Dataverse names as OData 4.0. ``start_cap_server`` copies the model to a
scratch folder, writes the demo ERP records there as CSV seed files, links
``node_modules`` of this folder and starts the server on a free port of
127.0.0.1.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from gateway.demo.data import DemoData
from gateway.demo.odata_fake import build_sets
from gateway.demo.sap import SAP_SETS

CAP_DIR = Path(__file__).resolve().parent
MODEL_FILES = ("package.json", "server.js", "db/schema.cds", "srv/services.cds", "srv/auth.js",
               "srv/tokens.js")
CDS_SERVE = Path("node_modules", "@sap", "cds", "bin", "serve.js")
NAMESPACE = "fonte.erp"
START_TIMEOUT = 90.0  # seconds; a start took 6 to 9 s on 2 shared cores
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
USER, PASSWORD = "COMM_USER", "s3cret"
CLIENT_ID, CLIENT_SECRET = "fonte-client", "s3cret"


class CapUnavailable(Exception):
    """Node.js, npm or the installed packages are missing, so the server cannot start."""


@dataclass(frozen=True)
class CapServer:
    """A running CAP test server: its root URL and the file its output goes to."""

    url: str
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def seed_value(value: object) -> str:
    """Return a demo value as a CAP CSV seed cell: empty for None, ISO 8601 for timestamps."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    text = str(value)
    if len(text) == 19 and text[10] == " ":
        return text.replace(" ", "T") + "Z"
    return text


def write_seed(data: DemoData, folder: Path) -> None:
    """Write each SAP entity set of ``data`` to ``folder/<namespace>-<entity>.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, entity_set in build_sets(data, SAP_SETS).items():
        properties = list(entity_set.spec.properties)
        with open(folder / f"{NAMESPACE}-{name}.csv", "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out, delimiter=";")
            writer.writerow(properties)
            for record in entity_set.records:
                writer.writerow([seed_value(record.get(prop)) for prop in properties])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def check_installed() -> str:
    """Return the path of ``node``, or raise ``CapUnavailable`` saying what to install."""
    node = shutil.which("node")
    if node is None:
        raise CapUnavailable("node was not found on PATH; install Node.js 20 or newer")
    if not (CAP_DIR / CDS_SERVE).is_file():
        raise CapUnavailable(f"{CAP_DIR / 'node_modules'} is missing or incomplete; run "
                             f"'npm ci' in {CAP_DIR} (make test does)")
    return node


@contextmanager
def start_cap_server(data: DemoData, workdir: Path) -> Iterator[CapServer]:
    """Run the CAP server over ``data`` until the block exits, then stop it.

    Raises ``CapUnavailable`` if Node.js or the packages are missing and
    ``RuntimeError`` if the server exits or does not respond within
    ``START_TIMEOUT`` seconds; the error includes the server's output.
    """
    node = check_installed()
    for name in MODEL_FILES:
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(CAP_DIR / name, workdir / name)
    (workdir / "node_modules").symlink_to(CAP_DIR / "node_modules", target_is_directory=True)
    write_seed(data, workdir / "db" / "data")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "NODE_ENV": "test", "CDS_COV2AP_TARGET": url,
                   "FONTE_CAP_USER": USER, "FONTE_CAP_PASSWORD": PASSWORD,
                   "FONTE_CAP_CLIENT_ID": CLIENT_ID, "FONTE_CAP_CLIENT_SECRET": CLIENT_SECRET}
    log_path = workdir / "cap-server.log"
    with open(log_path, "wb") as log:
        # Node.js accepts 16 KB of request line and headers by default, less
        # than the 32 KB GET URLs that the Dataverse dialect sends.
        process = subprocess.Popen([node, "--max-http-header-size=65536", str(CDS_SERVE), "all",
                                    "--port", str(port)],
                                   cwd=workdir, env=environment, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = CapServer(url, log_path)
    try:
        _wait_ready(process, server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(process: subprocess.Popen[bytes], server: CapServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the CAP server exited with code {process.returncode} before "
                               f"it responded; its output:\n{server.log_text()}")
        try:
            # The v2 adapter registers its routes once the server listens, so
            # the v2 service document is the last thing to respond.
            response = httpx.get(f"{server.url}/sap/opu/odata/sap/API_FONTE_DEMO/",
                                 auth=(USER, PASSWORD), timeout=2.0)
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the CAP server did not respond within {START_TIMEOUT:.0f} s; its "
                       f"output:\n{server.log_text()}")
