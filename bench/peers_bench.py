"""Measure Fonte beside Apollo Gateway and Hive Gateway on the same data and upstreams.

``bench/run`` calls this script after it has installed the Python and Node
dependencies. The script starts the demo CRM and ERP (Salesforce, Odoo and REST fakes)
and the CRM and ERP GraphQL subgraphs on loopback, with the injected latencies. It
composes the supergraph of the subgraphs and, for ``hive-rest``, that of the REST
fakes with GraphQL Mesh. Then it starts every gateway as one process pinned to
``--gateway-cpus``.
It checks that each gateway's response to each workload equals Fonte's, drives each
workload at saturation (autocannon) and at a fixed rate (open-loop, node:http), and
reads CPU time and peak RSS of the gateway from /proc. The gateways take turns, one
workload at a time, for ``--rounds`` rounds, each round in the reverse order of the
one before. A slow minute of the machine then falls on the gateways of a workload
alike, not on one gateway alone. It counts the upstream
requests from the fakes' request logs and the subgraphs' counters. It writes
``bench/results/peers-<UTC time>.json`` and the tables into ``bench/README.md``.

    bench/run [--quick] [--gateways fonte-on,fonte-off,fonte-rest,apollo,hive,hive-rest]
              [--customers 100] [--crm-latency-ms 0] [--erp-latency-ms 0] [--no-readme]

Exit status: 0 when every check passed, 1 when a response differed from Fonte's or a
response had a non-200 status, errors or a timeout, 2 when a process did not start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

# Python puts this script's folder first on sys.path, so the sibling module imports.
import peers_report

from gateway.demo.launch import role_purposes
from gateway.identity import issue_token, load_or_create_signing_key

log = logging.getLogger("bench.peers")

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / "peers"
NODE_BIN = PEERS_DIR / "node_modules" / ".bin"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 90.0
SOAK_SAMPLE_S = 10.0

GATEWAY_LABELS = {
    "fonte-on": "Fonte, policy + audit",
    "fonte-off": "Fonte, allow-all, no audit",
    "fonte-policy": "Fonte, policy, no audit",
    "fonte-rest": "Fonte, REST sources, policy + audit",
    "apollo": "Apollo Gateway",
    "hive": "Hive Gateway",
    "hive-rest": "Hive Gateway, Mesh over REST",
}
# Gateways that read the fakes; the others read the GraphQL subgraphs.
READS_FAKES = frozenset({"fonte-on", "fonte-off", "fonte-policy", "fonte-rest", "hive-rest"})
# The mode of bench/peers_fonte.py for each Fonte gateway that is not "on".
FONTE_MODES = {"fonte-off": "off", "fonte-policy": "policy"}
NPM_PACKAGES = ("@apollo/gateway", "@apollo/server", "@apollo/subgraph",
                "@graphql-hive/gateway", "@graphql-mesh/compose-cli", "@omnigraph/openapi",
                "autocannon", "graphql")
PYTHON_PACKAGES = ("strawberry-graphql", "graphql-core", "starlette", "uvicorn", "httpx",
                   "orjson")


@dataclass(frozen=True)
class Workload:
    """One GraphQL request that every virtual user of a run sends."""

    name: str
    role: str
    query: str
    variables: dict[str, Any]
    fixed_rate: int  # requests per second in the fixed-rate run, at most


CARD_FIELDS = ("id name vatNumber pec phone street city postalCode province region industry "
               "openBalance")
W2_FIELDS = "id name vatNumber street city postalCode province creditLimit openBalance iban"


def workloads(first_customer_id: str, customers: int) -> list[Workload]:
    """Build W1 (CRM card), W2 (list of 10 fields) and W3 (nested lists).

    The schema has no filter on a customer's invoices, so the card shows the five
    latest invoices with their payment status in place of "open invoices only".
    """
    card = ("query CrmCard($id: ID!) {\n  customer(id: $id) {\n    " + CARD_FIELDS + "\n"
            "    orders(first: 5) { number orderDate status amountTotal }\n"
            "    invoices(first: 5) { number dueDate amountResidual paymentStatus }\n  }\n}\n")
    listing = ("query CustomerList($first: Int!) {\n  customers(first: $first) {\n"
               "    edges { node { " + W2_FIELDS + " } }\n    pageInfo { hasNextPage }\n  }\n}\n")
    nested = ("query CustomerOrders($first: Int!) {\n  customers(first: $first) {\n"
              "    edges { node { id name\n"
              "      orders { number status amountTotal\n"
              "        shipments { reference status promisedDate carrier } }\n"
              "      invoices { number dueDate amountResidual paymentStatus } } }\n  }\n}\n")
    return [
        Workload("W1", "sales", card, {"id": first_customer_id}, 20),
        Workload("W2", "finance", listing, {"first": min(100, customers)}, 10),
        Workload("W3", "sales", nested, {"first": min(50, customers)}, 2),
    ]


EXPORT_SALES = """query Export($first: Int!) { customers(first: $first) { edges { node {
  id erpNumber name vatNumber pec phone street city postalCode province region industry
  openBalance
  orders { id number orderDate promisedDate status amountTotal
    shipments { id reference status scheduledDate promisedDate carrier } }
  invoices { id number invoiceDate dueDate amountTotal amountResidual paymentStatus }
} } } }"""
EXPORT_FINANCE = """query Export($first: Int!) { customers(first: $first) { edges { node {
  id creditLimit iban } } } }"""
CRM_FIELDS = ("id", "erpNumber", "name", "vatNumber", "pec", "phone", "street", "city",
              "postalCode", "province", "region", "industry")


# --------------------------------------------------------------------------- processes


class StartError(RuntimeError):
    """A benchmark process exited or did not respond in time."""


@dataclass
class Service:
    """A process that the benchmark started, with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def start(name: str, command: list[str], cpus: str, scratch: Path,
          env: Mapping[str, str] | None = None) -> Service:
    """Start ``command`` pinned to ``cpus`` in its own process group, output to a log file."""
    log_path = scratch / f"{name}.log"
    with log_path.open("wb") as output:
        process = subprocess.Popen(["taskset", "-c", cpus, *command], stdout=output,
                                   stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                   env={**os.environ, **(env or {})})
    log.info("started %s (pid %d) on cpu %s", name, process.pid, cpus)
    return Service(name, process, log_path)


def wait_until(service: Service, ready: Any, what: str) -> None:
    """Poll ``ready()`` until it returns true. Raise ``StartError`` if the process exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            tail = service.log_path.read_text(errors="replace")[-2000:]
            raise StartError(f"{service.name} exited with status {service.process.returncode} "
                             f"before {what}; its log ends:\n{tail}")
        with contextlib.suppress(httpx.HTTPError, OSError, ValueError):
            if ready():
                return
        time.sleep(0.2)
    raise StartError(f"{service.name} did not get ready ({what}) in {START_TIMEOUT_S:.0f} s; "
                     f"see {service.log_path}")


def graphql_ready(url: str) -> bool:
    response = httpx.post(url, json={"query": "{ __typename }"}, timeout=5)
    # Fonte returns 401 without a token, which also shows that it is serving.
    return response.status_code in (200, 401)


# --------------------------------------------------------------------------- /proc readings


def process_tree(pid: int) -> list[int]:
    """Return ``pid`` and all its descendants, from the parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending += children.get(current, [])
    return tree


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds of ``pid`` and its descendants."""
    ticks = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int, field: str = "VmHWM") -> float:
    """Return the sum of the peak resident sizes (VmHWM) of ``pid`` and its descendants.

    With ``field="VmRSS"`` it returns the current resident size instead.
    """
    kib = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    kib += int(line.split()[1])
    return kib / 1024


# --------------------------------------------------------------------------- upstreams


@dataclass
class Upstreams:
    """The running fakes and subgraphs, and how to read their request counters."""

    description: Path  # JSON written by peers_upstreams.py, with addresses and credentials
    fake_urls: tuple[str, ...]  # the Salesforce CRM, the Odoo ERP, the REST ERP and CRM
    subgraph_urls: dict[str, str]
    subgraph_control: str

    def clear_counts(self) -> None:
        for url in self.fake_urls:
            httpx.delete(f"{url}/__fonte/requests", timeout=10).raise_for_status()
        httpx.delete(f"{self.subgraph_control}/requests", timeout=10).raise_for_status()

    def fake_requests(self) -> int:
        """Count the vendor API calls in the fakes' logs, token requests and logins left out."""
        total = 0
        for url in self.fake_urls:
            response = httpx.get(f"{url}/__fonte/requests", timeout=30)
            response.raise_for_status()
            total += sum(1 for entry in response.json()["requests"]
                         if entry["entity"] is not None)
        return total

    def subgraph_requests(self) -> int:
        response = httpx.get(f"{self.subgraph_control}/requests", timeout=10)
        response.raise_for_status()
        counts: dict[str, int] = response.json()
        return sum(counts.values())


def start_fakes(args: argparse.Namespace, scratch: Path) -> tuple[Service, Path]:
    description = scratch / "upstreams.json"
    service = start("upstreams", [sys.executable, str(BENCH_DIR / "peers_upstreams.py"),
                                  "--customers", str(args.customers),
                                  "--crm-latency-ms", str(args.crm_latency_ms),
                                  "--erp-latency-ms", str(args.erp_latency_ms),
                                  "--output", str(description)],
                    args.other_cpus, scratch)
    wait_until(service, lambda: description.exists() and description.stat().st_size > 0,
               "writing its addresses")
    return service, description


def start_subgraphs(args: argparse.Namespace, export: Path,
                    scratch: Path) -> tuple[Service, dict[str, str], str]:
    ports = {"crm": free_port(), "erp": free_port(), "control": free_port()}
    service = start("subgraphs", ["node", str(PEERS_DIR / "subgraphs.mjs"), "--data", str(export),
                                  "--crm-port", str(ports["crm"]),
                                  "--erp-port", str(ports["erp"]),
                                  "--control-port", str(ports["control"]),
                                  "--crm-latency-ms", str(args.crm_latency_ms),
                                  "--erp-latency-ms", str(args.erp_latency_ms)],
                    args.other_cpus, scratch, env={"NODE_ENV": "production"})
    urls = {name: f"http://{LOOPBACK}:{ports[name]}/" for name in ("crm", "erp")}
    control = f"http://{LOOPBACK}:{ports['control']}"
    wait_until(service, lambda: httpx.get(f"{control}/requests", timeout=5).status_code == 200,
               "serving its control port")
    return service, urls, control


# --------------------------------------------------------------------------- tokens and data


def issue_tokens(data_dir: Path, roles: set[str], count: int) -> dict[str, list[str]]:
    """Issue ``count`` tokens per role, each for its own user, with the role's first purpose."""
    key = load_or_create_signing_key(data_dir / "keys" / "token-signing.pem")
    purposes = role_purposes()
    return {role: [issue_token(key, user=f"bench-{role}-{index}", roles=[role],
                               purpose=purposes[role][0])
                   for index in range(count)]
            for role in sorted(roles)}


def post(url: str, token: str, query: str, variables: Mapping[str, Any]) -> dict[str, Any]:
    """Send one GraphQL request and return the body. Raise ``StartError`` on any error."""
    response = httpx.post(url, json={"query": query, "variables": dict(variables)},
                          headers={"Authorization": f"Bearer {token}"}, timeout=60)
    if response.status_code != 200:
        raise StartError(f"POST {url} returned HTTP {response.status_code}: "
                         f"{response.text[:500]}")
    body: dict[str, Any] = response.json()
    if body.get("errors"):
        raise StartError(f"POST {url} returned errors: {json.dumps(body['errors'])[:500]}")
    return body


def export_data_set(url: str, tokens: Mapping[str, list[str]], customers: int,
                    path: Path) -> None:
    """Write the demo data set as Fonte serves it, in the shape the subgraphs read.

    The sales role reads everything but the credit limit and the IBAN, which the
    finance role reads unmasked. The export therefore merges the two responses
    by customer id.
    """
    variables = {"first": customers}
    sales = post(url, tokens["sales"][0], EXPORT_SALES, variables)
    finance = post(url, tokens["finance"][0], EXPORT_FINANCE, variables)
    money = {edge["node"]["id"]: edge["node"] for edge in finance["data"]["customers"]["edges"]}
    crm, erp = [], {}
    for edge in sales["data"]["customers"]["edges"]:
        node = edge["node"]
        crm.append({name: node[name] for name in CRM_FIELDS})
        erp[node["erpNumber"]] = {
            "openBalance": node["openBalance"], "orders": node["orders"],
            "invoices": node["invoices"], "creditLimit": money[node["id"]]["creditLimit"],
            "iban": money[node["id"]]["iban"],
        }
    path.write_text(json.dumps({"customers": crm, "erp": erp}), encoding="utf-8")


# --------------------------------------------------------------------------- gateways


def start_gateway(name: str, args: argparse.Namespace, scratch: Path, description: Path,
                  supergraphs: Mapping[str, Path]) -> tuple[Service, str]:
    """Start gateway ``name`` on a free port and return it with its GraphQL address.

    ``supergraphs`` maps "subgraphs" and "rest" to the supergraph files composed
    over the GraphQL subgraphs and over the REST fakes; a peer needs its own.
    """
    port = free_port()
    node_env = {"NODE_ENV": "production"}
    supergraph = supergraphs.get("rest" if name == "hive-rest" else "subgraphs")
    if name.startswith("fonte-"):
        data_dir = scratch / f"{name}-data"
        (data_dir / "keys").mkdir(parents=True)
        key = (scratch / "keys" / "token-signing.pem").read_bytes()
        (data_dir / "keys" / "token-signing.pem").write_bytes(key)
        (data_dir / "keys" / "token-signing.pem").chmod(0o600)
        command = [sys.executable, str(BENCH_DIR / "peers_fonte.py"),
                   "--upstreams", str(description), "--data-dir", str(data_dir),
                   "--port", str(port), "--mode", FONTE_MODES.get(name, "on"),
                   "--dialects", "rest" if name == "fonte-rest" else "vendor",
                   "--max-concurrency", str(args.fonte_max_concurrency)]
        service = start(name, command, args.gateway_cpus, scratch)
    elif supergraph is None:
        raise StartError(f"{name} needs the composed supergraph, which was not built")
    elif name == "hive-rest":
        upstreams = json.loads(description.read_text(encoding="utf-8"))
        service = start(name, [str(NODE_BIN / "hive-gateway"), "supergraph", str(supergraph),
                               "--config-path", str(PEERS_DIR / "gateway-rest.config.mjs"),
                               "--host", LOOPBACK, "--port", str(port), "--fork", "1"],
                        args.gateway_cpus, scratch,
                        env={**node_env,
                             "FONTE_BENCH_REST_CRM_KEY": upstreams["rest_crm_api_key"],
                             "FONTE_BENCH_REST_ERP_KEY": upstreams["rest_api_key"]})
    elif name == "apollo":
        service = start(name, ["node", str(PEERS_DIR / "apollo.mjs"), "--supergraph",
                               str(supergraph), "--port", str(port)],
                        args.gateway_cpus, scratch, env=node_env)
    else:
        service = start(name, [str(NODE_BIN / "hive-gateway"), "supergraph", str(supergraph),
                               "--config-path", str(PEERS_DIR / "gateway.config.mjs"),
                               "--host", LOOPBACK, "--port", str(port), "--fork", "1"],
                        args.gateway_cpus, scratch, env=node_env)
    url = f"http://{LOOPBACK}:{port}/graphql"
    wait_until(service, lambda: graphql_ready(url), f"answering on {url}")
    return service, url


def compose_supergraph(urls: Mapping[str, str], scratch: Path) -> Path:
    path = scratch / "supergraph.graphql"
    completed = subprocess.run(["node", str(PEERS_DIR / "compose.mjs"), "--crm-url", urls["crm"],
                                "--erp-url", urls["erp"], "--output", str(path)],
                               capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise StartError(f"composing the supergraph failed: {completed.stderr[-2000:]}")
    return path


def compose_rest_supergraph(upstream_urls: Mapping[str, str], scratch: Path) -> Path:
    """Compose the supergraph of the REST fakes with GraphQL Mesh, from their OpenAPI documents."""
    path = scratch / "rest-supergraph.graphql"
    env = {**os.environ, "FONTE_BENCH_REST_CRM_URL": upstream_urls["rest_crm_url"],
           "FONTE_BENCH_REST_ERP_URL": upstream_urls["rest_url"]}
    completed = subprocess.run([str(NODE_BIN / "mesh-compose"), "--config-path",
                                str(PEERS_DIR / "mesh.config.mjs"), "--output", str(path)],
                               capture_output=True, text=True, check=False, env=env,
                               cwd=PEERS_DIR)
    if completed.returncode != 0 or not path.exists():
        raise StartError(f"composing the REST supergraph with GraphQL Mesh failed: "
                         f"{(completed.stderr + completed.stdout)[-2000:]}")
    return path


# --------------------------------------------------------------------------- load


def run_load(url: str, body: Path, tokens: Path, connections: int, duration: float,
             cpus: str, rate: float | None = None) -> dict[str, Any]:
    """Run bench/peers/load.mjs once and return its JSON output."""
    command = ["taskset", "-c", cpus, "node", str(PEERS_DIR / "load.mjs"), "--url", url,
               "--body", str(body), "--tokens", str(tokens),
               "--connections", str(connections), "--duration", f"{duration:g}"]
    if rate is not None:
        command += ["--rate", f"{rate:g}"]
    completed = subprocess.run(command, capture_output=True, text=True, check=False,
                               timeout=duration + 120)
    if completed.returncode != 0:
        raise StartError(f"load.mjs failed with status {completed.returncode}: "
                         f"{completed.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def check_answer(url: str, token: str, workload: Workload, reference: Any) -> str:
    """Return "ok" when the gateway's data equals Fonte's, or what differed."""
    try:
        data = post(url, token, workload.query, workload.variables)["data"]
    except StartError as exc:
        return str(exc)
    difference = peers_report.first_difference(reference, data)
    return "ok" if difference is None else f"answer differs from Fonte's at {difference}"


def wait_for_idle(pid: int, limit_s: float = 60.0) -> None:
    """Wait until the gateway has finished the requests that a load run left behind.

    The load generator stops at its deadline without waiting for the responses in
    flight, and the gateway keeps working on them. Two quiet half-seconds in a row
    (under 5 % of a core each) count as idle.
    """
    deadline = time.monotonic() + limit_s
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        quiet = quiet + 1 if cpu_seconds(pid) - before < 0.025 else 0
    if quiet < 2:
        log.warning("gateway pid %d still busy %.0f s after a load run", pid, limit_s)


def measure_workload(gateway: str, service: Service, url: str, workload: Workload,
                     files: Mapping[str, Path], upstreams: Upstreams,
                     args: argparse.Namespace) -> dict[str, Any]:
    """Warm the gateway up, then run the workload at saturation and at its fixed rate once."""
    body, tokens = files[f"{workload.name}-body"], files[f"{workload.role}-tokens"]
    pid = service.process.pid
    run_load(url, body, tokens, args.connections, args.warmup_s, args.other_cpus)
    wait_for_idle(pid)

    upstreams.clear_counts()
    cpu_before = cpu_seconds(pid)
    saturation = run_load(url, body, tokens, args.connections, args.saturation_s,
                          args.other_cpus)
    cpu_used = cpu_seconds(pid) - cpu_before
    calls = (upstreams.fake_requests() if gateway in READS_FAKES
             else upstreams.subgraph_requests())
    done = max(saturation["requests"], 1)
    saturation["cpu_ms_per_request"] = round(cpu_used * 1000 / done, 3)
    saturation["upstream_requests_per_query"] = round(calls / done, 3)
    # Below about 0.9, the gateway's core was not the bottleneck. The upstreams or
    # the load generator on the other cores were.
    saturation["gateway_cpu_share"] = round(cpu_used / saturation["duration_s"], 3)

    wait_for_idle(pid)
    # Latency above a gateway's capacity would measure its queue, not its work, so a
    # gateway slower than twice the workload's rate gets half its own throughput.
    rate = min(float(workload.fixed_rate), round(saturation["requests_per_s"] / 2, 1))
    fixed = run_load(url, body, tokens, args.connections, args.fixed_rate_s, args.other_cpus,
                     rate=max(rate, 0.5))
    fixed["rate"] = max(rate, 0.5)
    wait_for_idle(pid)
    log.info("%s %s: %.1f req/s at saturation, p50 %.1f ms at %g req/s", gateway,
             workload.name, saturation["requests_per_s"], fixed["latency_ms"]["p50"] or 0,
             fixed["rate"])
    return {"saturation": saturation, "fixed_rate": fixed}


# --------------------------------------------------------------------------- run


def soak(service: Service, url: str, workload: Workload, files: Mapping[str, Path],
         rate: float, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``workload`` at ``rate`` for ``args.soak_s`` seconds and sample the gateway's RSS.

    The resident size (VmRSS of the process and its children) is read every
    ``SOAK_SAMPLE_S`` seconds while the load runs.
    """
    samples: list[tuple[float, float]] = []
    finished = threading.Event()

    def sample() -> None:
        started = time.monotonic()
        while not finished.wait(SOAK_SAMPLE_S):
            samples.append((round(time.monotonic() - started, 1),
                            round(peak_rss_mib(service.process.pid, "VmRSS"), 1)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        load = run_load(url, files[f"{workload.name}-body"], files[f"{workload.role}-tokens"],
                        args.connections, args.soak_s, args.other_cpus, rate=rate)
    finally:
        finished.set()
        sampler.join()
    return {"workload": workload.name, "rate": rate, "load": load, "rss_mib": samples}


def machine_description() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    meminfo = Path("/proc/meminfo").read_text().split()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    return {"cpu_model": model, "cpus": os.cpu_count(),
            "memory_gib": int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024 / 1024,
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "node": node.stdout.strip().lstrip("v"),
            "load_before": os.getloadavg()[0]}


def versions() -> dict[str, str]:
    found = {"fonte": metadata.version("fonte")}
    for name in PYTHON_PACKAGES:
        found[name] = metadata.version(name)
    for name in NPM_PACKAGES:
        package = json.loads((PEERS_DIR / "node_modules" / name / "package.json").read_text())
        found[name] = str(package["version"])
    return found


def git_state() -> tuple[str, bool]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True, check=False).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                            capture_output=True, text=True, check=False).stdout.strip()
    return commit or "unknown", bool(status)


@contextlib.contextmanager
def services() -> Iterator[list[Service]]:
    """Collect started services and stop them all, newest first, on the way out."""
    started: list[Service] = []
    try:
        yield started
    finally:
        for service in reversed(started):
            service.stop()


def write_request_files(items: list[Workload], tokens: Mapping[str, list[str]],
                        scratch: Path) -> dict[str, Path]:
    files = {}
    for workload in items:
        path = scratch / f"{workload.name}.json"
        path.write_text(json.dumps({"query": workload.query, "variables": workload.variables}))
        files[f"{workload.name}-body"] = path
    for role, role_tokens in tokens.items():
        path = scratch / f"{role}-tokens.json"
        path.write_text(json.dumps(role_tokens))
        files[f"{role}-tokens"] = path
    return files


def benchmark(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Start everything, measure every selected gateway, and return the results."""
    results: dict[str, Any] = {"gateways": []}
    with services() as running:
        fakes, description = start_fakes(args, scratch)
        running.append(fakes)
        upstream_urls = json.loads(description.read_text())
        tokens = issue_tokens(scratch, {"sales", "finance"}, args.connections)

        reference_service, reference_url = start_gateway("fonte-on", args, scratch,
                                                         description, {})
        running.append(reference_service)
        export = scratch / "subgraph-data.json"
        export_data_set(reference_url, tokens, args.customers, export)
        first_id = json.loads(export.read_text())["customers"][0]["id"]
        items = workloads(first_id, args.customers)
        references = {w.name: post(reference_url, tokens[w.role][0], w.query,
                                   w.variables)["data"] for w in items}
        files = write_request_files(items, tokens, scratch)

        subgraphs, subgraph_urls, control = start_subgraphs(args, export, scratch)
        running.append(subgraphs)
        supergraphs = {"subgraphs": compose_supergraph(subgraph_urls, scratch)}
        if "hive-rest" in args.gateways:
            supergraphs["rest"] = compose_rest_supergraph(upstream_urls, scratch)
        fake_urls = tuple(upstream_urls[name]
                          for name in ("crm_url", "erp_url", "rest_url", "rest_crm_url"))
        upstreams = Upstreams(description, fake_urls, subgraph_urls, control)

        started: dict[str, tuple[Service, str]] = {}
        for name in args.gateways:
            if name == "fonte-on":
                started[name] = (reference_service, reference_url)
            else:
                service, url = start_gateway(name, args, scratch, description, supergraphs)
                running.append(service)
                started[name] = (service, url)
        checks = {name: {w.name: check_answer(url, tokens[w.role][0], w, references[w.name])
                         for w in items}
                  for name, (_, url) in started.items()}

        slices: dict[str, dict[str, list[dict[str, Any]]]] = {
            name: {w.name: [] for w in items} for name in started}
        for round_number in range(args.rounds):
            order = list(started) if round_number % 2 == 0 else list(reversed(started))
            for workload in items:
                for name in order:
                    service, url = started[name]
                    slices[name][workload.name].append(
                        measure_workload(name, service, url, workload, files, upstreams,
                                         args))

        for name, (service, url) in started.items():
            measured: dict[str, Any] = {}
            for w in items:
                runs = slices[name][w.name]
                measured[w.name] = {"check": checks[name][w.name],
                                    **peers_report.merge_rounds(runs), "rounds": runs}
            entry = {"name": name, "label": GATEWAY_LABELS[name], "workers": 1,
                     "cpus": args.gateway_cpus, "workloads": measured}
            if args.soak_s > 0:
                card = items[0]
                entry["soak"] = soak(service, url, card, files,
                                     measured[card.name]["fixed_rate"]["rate"], args)
            entry["peak_rss_mib"] = round(peak_rss_mib(service.process.pid), 1)
            results["gateways"].append(entry)
            if peers_report.failures({"gateways": [entry]}):
                # The log is deleted with the scratch folder, and the peers hide
                # the cause of a failed field from the client in production mode.
                log.warning("%s had failed responses; its log ends:\n%s", name,
                            service.log_path.read_text(errors="replace")[-3000:])
    return results


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateways", default="fonte-on,fonte-off,fonte-rest,apollo,hive,hive-rest",
                        help="comma-separated gateways to measure, from "
                             f"{', '.join(GATEWAY_LABELS)} (default: all)")
    parser.add_argument("--customers", type=int, default=100,
                        help="demo customers (default 100, at most 500)")
    parser.add_argument("--crm-latency-ms", type=float, default=0.0,
                        help="milliseconds each CRM request waits, fakes and subgraph alike")
    parser.add_argument("--erp-latency-ms", type=float, default=0.0,
                        help="milliseconds each ERP request waits, fakes and subgraph alike")
    parser.add_argument("--connections", type=int, default=16,
                        help="virtual users, each one connection with its own token")
    parser.add_argument("--saturation-s", type=float, default=10.0,
                        help="seconds of each saturation run, per round (default 10)")
    parser.add_argument("--fixed-rate-s", type=float, default=10.0,
                        help="seconds of each fixed-rate run, per round (default 10)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds in which the gateways take turns on each workload, "
                             "each round in the reverse order of the one before (default 2)")
    parser.add_argument("--warmup-s", type=float, default=3.0,
                        help="seconds of untimed load before each workload (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="3 s runs and 1 s warm-up, to check that the harness works")
    parser.add_argument("--soak-s", type=float, default=0.0,
                        help="after the workloads, run W1 at its fixed rate for this many "
                             "seconds and sample each gateway's RSS (default 0: no soak)")
    parser.add_argument("--fonte-max-concurrency", type=int, default=10,
                        help="Fonte's max_concurrency: upstream requests in flight per "
                             "system (default 10, the gateway's default); the peers have "
                             "no such limit")
    parser.add_argument("--gateway-cpus", default="1",
                        help="taskset CPU list of each gateway process (default 1)")
    parser.add_argument("--other-cpus", default="0",
                        help="taskset CPU list of upstreams and load generator (default 0)")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results",
                        help="folder of the results file (default bench/results)")
    parser.add_argument("--no-readme", action="store_true",
                        help="do not write the tables into bench/README.md")
    args = parser.parse_args(argv)

    args.gateways = [name.strip() for name in args.gateways.split(",") if name.strip()]
    unknown = sorted(set(args.gateways) - set(GATEWAY_LABELS))
    if unknown:
        parser.error(f"unknown gateway(s) {', '.join(unknown)}; "
                     f"use names from {', '.join(GATEWAY_LABELS)}")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds} is invalid; use 1 or more")
    if not 1 <= args.customers <= 500:
        parser.error(f"--customers {args.customers} is out of range; use 1 to 500, the "
                     "gateway's page size limit")
    if args.quick:
        args.saturation_s, args.fixed_rate_s, args.warmup_s, args.rounds = 3.0, 3.0, 1.0, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    # SIGTERM then unwinds like Ctrl-C, so the started processes are stopped.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = datetime.now(UTC)
    machine = machine_description()
    commit, dirty = git_state()
    with tempfile.TemporaryDirectory(prefix="fonte-bench-peers-") as scratch:
        try:
            results = benchmark(args, Path(scratch))
        except StartError as exc:
            log.error("benchmark stopped: %s", exc)
            return 2
    finished = datetime.now(UTC)
    machine["load_after"] = os.getloadavg()[0]

    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"peers-{finished:%Y%m%dT%H%M%SZ}.json"
    results["run"] = {"started_utc": f"{started:%Y-%m-%d %H:%M:%S} UTC",
                      "finished_utc": f"{finished:%Y-%m-%d %H:%M:%S} UTC",
                      "commit": commit, "dirty": dirty, "quick": args.quick,
                      "results_file": str(path.relative_to(REPO)
                                          if path.is_relative_to(REPO) else path)}
    results["machine"] = machine
    results["versions"] = versions()
    results["settings"] = {
        "customers": args.customers, "crm_latency_ms": args.crm_latency_ms,
        "erp_latency_ms": args.erp_latency_ms, "connections": args.connections,
        "saturation_s": args.saturation_s, "fixed_rate_s": args.fixed_rate_s,
        "rounds": args.rounds,
        "warmup_s": args.warmup_s, "gateway_cpus": args.gateway_cpus,
        "other_cpus": args.other_cpus, "soak_s": args.soak_s,
        "fonte_max_concurrency": args.fonte_max_concurrency,
        "fixed_rates": {w.name: w.fixed_rate for w in workloads("", args.customers)},
    }
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    section = peers_report.render(results)
    print(section)
    if not args.no_readme:
        readme = BENCH_DIR / "README.md"
        readme.write_text(peers_report.replace_section(readme.read_text(encoding="utf-8"),
                                                       section), encoding="utf-8")
    return 1 if peers_report.failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
