"""Per-request cost of the policy at 10 and at 10,000 rules.

The gateway compiles a (roles, purpose) pair's decisions once per policy
version and then reads them from a table, so the number of rules should
change the cost of the first request of a pair (the compile) and not the
cost of the requests after it. This script measures both, in one run:

- the compile: ``PolicyEngine.view`` for the finance role on a fresh engine,
  which asks casbin about every declared field;
- the request: the 100-customer, 10-field query of ``query_cost.py``,
  end to end through the in-process gateway, with each policy in force.

The large policy is the small one plus 9,990 rules for 999 other roles,
each naming real categories and fields. The gateway compiles a role's view
with an enforcer that holds only that role's rules, so the other roles'
rules cost one pass to pick them out, not one pass per casbin call.

Run: ``.venv/bin/python bench/policy_cost.py [--iterations 200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from query_cost import (
    PURPOSE,
    ROLE,
    asgi_stack,
    check_response,
    machine,
    summarise,
)

from gateway.catalog import load_catalog
from gateway.policy import PolicyEngine, default_policy_dir

SMALL_RULES = [
    "p, finance, non_personal, finance, allow, -",
    "p, finance, identity, finance, allow, -",
    "p, finance, contact.address, finance, allow, -",
    "p, finance, financial, finance, allow, -",
    "p, finance, commercial.order, finance, allow, -",
    "p, sales, non_personal, customer-relations, allow, -",
    "p, sales, identity, customer-relations, allow, -",
    "p, sales, contact, customer-relations, allow, -",
    "g3, billing, finance",
    "g3, sales, customer-relations",
]
CUSTOMERS = 100


def filler_rules(count: int) -> list[str]:
    """Return ``count`` rules for other roles over real categories and fields."""
    catalog = load_catalog()
    objects = sorted(catalog.categories) + [d.qualified_name for d in catalog.all_fields()]
    effects = ["allow, -", "deny, -", "allow, last4", "allow, pseudonym:bench"]
    rules = []
    for index in range(count):
        role = f"role-{index // 10:04d}"
        target = objects[index % len(objects)]
        rules.append(f"p, {role}, {target}, purpose-{index % 7}, {effects[index % 4]}")
    return rules


def write_policy(directory: Path, rules: list[str]) -> Path:
    directory.mkdir(parents=True)
    shipped = default_policy_dir()
    shutil.copy(shipped / "model.conf", directory / "model.conf")
    shutil.copy(shipped / "purposes.toml", directory / "purposes.toml")
    (directory / "policy.csv").write_text("\n".join(rules) + "\n", encoding="utf-8")
    return directory


def compile_seconds(directory: Path, repeats: int) -> list[float]:
    """Time compiling the finance view on a freshly loaded policy, ``repeats`` times."""
    catalog = load_catalog()
    timings = []
    for _ in range(repeats):
        engine = PolicyEngine.from_directory(catalog, directory)
        started = time.perf_counter()
        engine.view([ROLE], PURPOSE)
        timings.append(time.perf_counter() - started)
    return timings


async def request_seconds(directory: Path, data_dir: Path, iterations: int,
                          warmup: int) -> list[float]:
    """Time the 100-customer query through the gateway with this policy in force."""
    timings = []
    async with asgi_stack(CUSTOMERS, data_dir, policy_dir=directory) as stack:
        for index in range(warmup + iterations):
            started = time.perf_counter()
            response = await stack.query(CUSTOMERS)
            elapsed = time.perf_counter() - started
            check_response(response, CUSTOMERS)
            if index >= warmup:
                timings.append(elapsed)
    return timings


async def run(iterations: int, warmup: int) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "iterations": iterations,
                               "customers": CUSTOMERS, "policies": {}}
    with tempfile.TemporaryDirectory(prefix="fonte-policy-bench-") as scratch:
        root = Path(scratch)
        policies = {
            "10 rules": SMALL_RULES,
            "10,000 rules": SMALL_RULES + filler_rules(10_000 - len(SMALL_RULES)),
        }
        for name, rules in policies.items():
            slug = str(len(rules))
            directory = write_policy(root / f"policy-{slug}", rules)
            requests = await request_seconds(directory, root / f"data-{slug}", iterations,
                                             warmup)
            results["policies"][name] = {
                "rules": len(rules),
                "compile_ms": summarise(compile_seconds(directory, 5)),
                "request_ms": summarise(requests),
            }
    small, large = (results["policies"][n]["request_ms"]["median_ms"]
                    for n in ("10 rules", "10,000 rules"))
    results["request_ratio"] = large / small
    return results


def report(results: dict[str, Any]) -> str:
    lines = [f"{'policy':<14} {'compile median ms':>18} {'request median ms':>18} "
             f"{'request p95 ms':>15}"]
    for name, entry in results["policies"].items():
        lines.append(f"{name:<14} {entry['compile_ms']['median_ms']:>18.1f} "
                     f"{entry['request_ms']['median_ms']:>18.2f} "
                     f"{entry['request_ms']['p95_ms']:>15.2f}")
    lines.append(f"request median, 10,000 / 10 rules: {results['request_ratio']:.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200, help="timed requests per policy")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests first")
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "policy_cost.json")
    args = parser.parse_args()
    results = asyncio.run(run(args.iterations, args.warmup))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(report(results))
    print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
