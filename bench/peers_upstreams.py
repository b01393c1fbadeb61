"""Serve the demo CRM and ERP for the peer benchmark.

Each system is served twice over the same records: the CRM in the Salesforce
dialect and the ERP as Odoo JSON-RPC, and both as plain REST with an OpenAPI
description. ``bench/run`` starts this script as its own process, pinned to the
cores that the gateways do not use. It generates the demo data set, starts the four
fakes on free
127.0.0.1 ports, sets the injected latency of every vendor API call, writes the
addresses and the random credentials to ``--output`` (mode 0600) and serves until
SIGTERM or SIGINT.

    .venv/bin/python bench/peers_upstreams.py --customers 100 --crm-latency-ms 0 \
        --erp-latency-ms 0 --output /tmp/upstreams.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import signal
import sys
from pathlib import Path

import httpx

from gateway.demo.data import generate
from gateway.demo.launch import (
    LOOPBACK,
    serve_in_background,
    start_demo_systems,
    stop_background,
)
from gateway.demo.rest import create_rest_app
from gateway.demo.rest_crm import create_rest_crm_app
from gateway.sources.odoo import OdooSettings

log = logging.getLogger("bench.peers_upstreams")


async def set_latency(base_url: str, milliseconds: float) -> None:
    """Make every vendor API call of the fake at ``base_url`` wait ``milliseconds`` first."""
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.put("/__fonte/fault",
                                    json={"status": None, "delay": milliseconds / 1000})
        response.raise_for_status()


async def serve(customers: int, crm_latency_ms: float, erp_latency_ms: float,
                output: Path) -> None:
    data = generate(customers=customers)
    systems, servers = await start_demo_systems(data, "odoo")
    rest_api_key = secrets.token_hex(20)
    rest_server, rest_port = await serve_in_background(create_rest_app(data,
                                                                       api_key=rest_api_key))
    servers.append(rest_server)
    rest_url = f"http://{LOOPBACK}:{rest_port}"
    rest_crm_api_key = secrets.token_hex(20)
    rest_crm_server, rest_crm_port = await serve_in_background(
        create_rest_crm_app(data, api_key=rest_crm_api_key))
    servers.append(rest_crm_server)
    rest_crm_url = f"http://{LOOPBACK}:{rest_crm_port}"
    try:
        await set_latency(systems.crm_url, crm_latency_ms)
        await set_latency(systems.erp_url, erp_latency_ms)
        await set_latency(rest_url, erp_latency_ms)
        await set_latency(rest_crm_url, crm_latency_ms)
        if not isinstance(systems.erp, OdooSettings):
            raise RuntimeError("the benchmark reads the demo ERP with the Odoo JSON-RPC dialect")
        description = {
            "crm_url": systems.crm_url,
            "crm_client_id": systems.crm.client_id,
            "crm_client_secret": systems.crm.client_secret,
            "erp_url": systems.erp_url,
            "erp_database": systems.erp.database,
            "erp_login": systems.erp.login,
            "erp_api_key": systems.erp.api_key,
            "rest_url": rest_url,
            "rest_api_key": rest_api_key,
            "rest_crm_url": rest_crm_url,
            "rest_crm_api_key": rest_crm_api_key,
        }
        output.touch(mode=0o600)
        output.write_text(json.dumps(description), encoding="utf-8")
        log.info("demo CRM at %s (Salesforce) and %s (REST), demo ERP at %s (Odoo) and %s "
                 "(REST), %d customers", systems.crm_url, rest_crm_url, systems.erp_url,
                 rest_url, customers)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stop.set)
        await stop.wait()
    finally:
        for server in servers:
            await stop_background(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100,
                        help="demo customers to generate (default 100)")
    parser.add_argument("--crm-latency-ms", type=float, default=0.0,
                        help="milliseconds every CRM API call waits before it responds")
    parser.add_argument("--erp-latency-ms", type=float, default=0.0,
                        help="milliseconds every ERP API call waits before it responds")
    parser.add_argument("--output", type=Path, required=True,
                        help="JSON file to write the addresses and credentials to")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.customers, args.crm_latency_ms, args.erp_latency_ms, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
