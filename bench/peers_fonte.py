"""Serve the Fonte gateway for the peer benchmark, in one process with one event loop.

``bench/run`` starts this script pinned to the gateway's cores. The gateway reads
the demo systems that ``bench/peers_upstreams.py`` described in ``--upstreams``.

``--dialects`` picks how the gateway reads the CRM and the ERP: in their vendor
dialects (Salesforce and Odoo JSON-RPC), or both as plain REST through the
generic ``rest`` dialect. ``--mode on`` is the gateway as shipped:
the policy of ``policies/`` and a durable audit record for every request that
reads personal data. ``--mode off`` measures what policy and audit cost. Fonte
has no switch that removes either, so this script approximates "off" in two
ways. It gives the benchmark's roles a policy that allows every data category
with no mask and no row rule, so the planner still looks each field up in the
compiled view. It also swaps in an audit recorder that records nothing.
``--mode policy`` keeps the shipped policy and records nothing, which splits
the cost of the two.

    .venv/bin/python bench/peers_fonte.py --upstreams /tmp/upstreams.json \
        --data-dir /tmp/fonte-data --port 8100 --mode on
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import uvicorn

from gateway.app import create_app
from gateway.audit_events import AuditRecorder
from gateway.config import Settings
from gateway.demo.mappings import demo_rest_settings
from gateway.demo.rest_crm import demo_rest_crm_settings
from gateway.limits import OperationLimits
from gateway.plan import Plan
from gateway.policy import default_policy_dir
from gateway.serving import uvicorn_options
from gateway.sources.odoo import OdooSettings
from gateway.sources.resilience import MAX_CONCURRENCY, ResiliencePolicy
from gateway.sources.rest import RestSettings
from gateway.sources.salesforce import SalesforceSettings

log = logging.getLogger("bench.peers_fonte")

# W3 and the start-up export read nested lists without `first`, which the cost
# estimate counts as 50 rows per parent (the default page size). The default
# max_cost of 50,000 rejects both. The export of 100 customers is estimated at
# 260,150, so the benchmark's gateway admits ten million.
BENCH_MAX_COST = 10_000_000

# The roles that the workloads use, and the top-level data categories of
# schema/taxonomy.toml that the allow-all policy grants them.
BENCH_ROLES = ("sales", "finance")
TOP_CATEGORIES = ("non_personal", "identity", "contact", "commercial", "financial",
                  "logistics")


def write_allow_all_policy(directory: Path) -> Path:
    """Write a policy that lets the benchmark roles read every category unmasked.

    The model and the purposes are the shipped ones, so tokens with the shipped
    purposes stay valid.
    """
    directory.mkdir(parents=True, exist_ok=True)
    shipped = default_policy_dir()
    for name in ("model.conf", "purposes.toml"):
        shutil.copyfile(shipped / name, directory / name)
    rows = [f"p, {role}, {category}, *, allow, -"
            for role in BENCH_ROLES for category in TOP_CATEGORIES]
    (directory / "policy.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return directory


def _record_nothing(plan: Plan) -> bool:
    return False


def settings_from(upstreams: dict[str, str], dialects: str, data_dir: Path, port: int,
                  policy_dir: Path | None,
                  max_concurrency: int = ResiliencePolicy.max_concurrency) -> Settings:
    crm: SalesforceSettings | RestSettings
    erp: OdooSettings | RestSettings
    if dialects == "rest":
        crm = demo_rest_crm_settings(upstreams["rest_crm_url"], upstreams["rest_crm_api_key"])
        erp = demo_rest_settings(upstreams["rest_url"], upstreams["rest_api_key"])
    else:
        crm = SalesforceSettings(login_url=upstreams["crm_url"],
                                 client_id=upstreams["crm_client_id"],
                                 client_secret=upstreams["crm_client_secret"])
        erp = OdooSettings(base_url=upstreams["erp_url"], database=upstreams["erp_database"],
                           login=upstreams["erp_login"], api_key=upstreams["erp_api_key"])
    extra = {"policy_dir": policy_dir} if policy_dir is not None else {}
    resilience = {name: ResiliencePolicy(max_concurrency=max_concurrency)
                  for name in ("crm", "erp")}
    return Settings(systems={"crm": crm, "erp": erp}, data_dir=data_dir, port=port,
                    graphiql=False, development_tokens=True, resilience=resilience,
                    operation_limits=OperationLimits(max_cost=BENCH_MAX_COST),
                    **extra)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstreams", type=Path, required=True,
                        help="JSON file written by bench/peers_upstreams.py")
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="folder of the audit store and keys (the token signing key "
                             "must already be in keys/token-signing.pem)")
    parser.add_argument("--port", type=int, required=True, help="127.0.0.1 port to listen on")
    parser.add_argument("--dialects", choices=("vendor", "rest"), default="vendor",
                        help="vendor: read the CRM as Salesforce and the ERP as Odoo JSON-RPC; "
                             "rest: read both as plain REST (default vendor)")
    parser.add_argument("--mode", choices=("on", "off", "policy"), default="on",
                        help="on: shipped policy and audit. off: allow-all policy, no audit. "
                             "policy: shipped policy, no audit")
    parser.add_argument("--max-concurrency", type=int,
                        default=ResiliencePolicy.max_concurrency,
                        help="upstream requests in flight per system (the gateway's "
                             f"max_concurrency; default {ResiliencePolicy.max_concurrency}, "
                             f"at most {MAX_CONCURRENCY})")
    args = parser.parse_args(argv)
    if not 1 <= args.max_concurrency <= MAX_CONCURRENCY:
        parser.error(f"--max-concurrency {args.max_concurrency} is out of range; use 1 to "
                     f"{MAX_CONCURRENCY}")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    upstreams = json.loads(args.upstreams.read_text(encoding="utf-8"))
    policy_dir = None
    if args.mode == "off":
        policy_dir = write_allow_all_policy(args.data_dir / "allow-all-policy")
    if args.mode in ("off", "policy"):
        # Class attribute, so every recorder in this process skips the audit.
        AuditRecorder.must_record = staticmethod(_record_nothing)  # type: ignore[method-assign]
    settings = settings_from(upstreams, args.dialects, args.data_dir, args.port, policy_dir,
                             args.max_concurrency)
    uvicorn.run(create_app(settings, server_process=True), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False, lifespan="on", **uvicorn_options())
    return 0


if __name__ == "__main__":
    sys.exit(main())
