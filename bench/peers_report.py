"""Turn a results file of the peer benchmark into Markdown tables.

``bench/peers_bench.py`` writes ``bench/results/peers-<UTC time>.json``. This module
reads such a file and renders the ratio table and the detail tables. It puts them
into ``bench/README.md`` between two marker lines. It only reads, combines and
formats, so a test can run it on a recorded sample.

    .venv/bin/python bench/peers_report.py bench/results/peers-<time>.json [--readme FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

START_MARKER = "<!-- peers-table:start (written by bench/run) -->"
END_MARKER = "<!-- peers-table:end -->"
WORKLOADS = ("W1", "W2", "W3")
# The gateway that the policy + audit cost is measured on.
SUBJECT = "fonte-on"
# The throughput ratios: Fonte over the vendor dialects beside the peers over GraphQL
# subgraphs, and Fonte over plain REST beside Hive Gateway over the same REST through
# GraphQL Mesh. The first two always get a column, the others only when one of their
# gateways ran.
RATIOS = (("fonte-on", "apollo"), ("fonte-on", "hive"), ("fonte-rest", "hive-rest"))
ALWAYS_SHOWN = frozenset({("fonte-on", "apollo"), ("fonte-on", "hive")})
UNCONTROLLED = "fonte-off"
# With the policy-only variant in a run, the policy + audit cost is split in two. Each
# entry is (column header, gateway measured, gateway without that cost).
POLICY_ONLY = "fonte-policy"
SPLIT_COSTS = (("audit cost", SUBJECT, POLICY_ONLY), ("policy cost", POLICY_ONLY, UNCONTROLLED))
# The member of a load run that keeps the start of the first response of each counter.
SAMPLES = {"non_200": "non_200_sample", "with_errors": "errors_sample"}


class ResultsError(ValueError):
    """A results file lacks a member that the tables need."""


def first_difference(expected: Any, actual: Any, path: str = "data") -> str | None:
    """Return the path of the first value where ``actual`` differs from ``expected``, or None."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in expected.keys() | actual.keys():
            if key not in expected or key not in actual:
                return f"{path}.{key} (present on one side only)"
            found = first_difference(expected[key], actual[key], f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return f"{path} ({len(expected)} items expected, {len(actual)} received)"
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            found = first_difference(left, right, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    return None if expected == actual else path


def load_results(path: Path) -> dict[str, Any]:
    """Read a results file and check that it has the members the tables read."""
    results: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    for member in ("run", "machine", "versions", "settings", "gateways"):
        if member not in results:
            raise ResultsError(f"results file {path} has no {member!r} member; "
                               "write it again with bench/run")
    return results


# Counters of a load run that add up over rounds.
_COUNTERS = ("requests", "non_200", "with_errors", "timeouts", "socket_errors")


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the runs of one gateway and workload over the rounds.

    Requests, failures, seconds and CPU add up, so requests/s and CPU per
    request are those of all rounds together. Latency percentiles cannot be
    added, so each is the median of the rounds' values. The first sample of
    a failure is the first round's that has one.
    """
    merged: dict[str, Any] = {}
    for stage_name in ("saturation", "fixed_rate"):
        stages = [entry[stage_name] for entry in rounds]
        stage: dict[str, Any] = {"mode": stages[0]["mode"]}
        for counter in _COUNTERS:
            stage[counter] = sum(s[counter] for s in stages)
        duration = sum(s["duration_s"] for s in stages)
        stage["duration_s"] = round(duration, 3)
        stage["requests_per_s"] = round(stage["requests"] / duration, 3) if duration else 0.0
        stage["latency_ms"] = {
            key: _median([s["latency_ms"][key] for s in stages
                          if s["latency_ms"].get(key) is not None])
            for key in stages[0]["latency_ms"]}
        statuses: dict[str, int] = {}
        for s in stages:
            for status, count in s.get("non_200_statuses", {}).items():
                statuses[status] = statuses.get(status, 0) + count
        stage["non_200_statuses"] = statuses
        for sample in ("non_200_sample", "errors_sample"):
            stage[sample] = next((s[sample] for s in stages if s.get(sample)), None)
        if stage_name == "saturation":
            requests = max(stage["requests"], 1)
            cpu_ms = sum(s["cpu_ms_per_request"] * max(s["requests"], 1) for s in stages)
            calls = sum(s["upstream_requests_per_query"] * max(s["requests"], 1)
                        for s in stages)
            stage["cpu_ms_per_request"] = round(cpu_ms / requests, 3)
            stage["upstream_requests_per_query"] = round(calls / requests, 3)
            stage["gateway_cpu_share"] = round(cpu_ms / 1000 / duration, 3) if duration else 0.0
        else:
            stage["rate"] = min(s["rate"] for s in stages)
        merged[stage_name] = stage
    return merged


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return round((ordered[middle - 1] + ordered[middle]) / 2, 3)


def _gateways(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {gateway["name"]: gateway for gateway in results["gateways"]}


def _stage(gateway: Mapping[str, Any], workload: str, stage: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = gateway.get("workloads", {}).get(workload, {}).get(stage)
    return found


def throughput(results: Mapping[str, Any], name: str, workload: str) -> float | None:
    """Return the saturation requests/s of gateway ``name``, or None when it was not run."""
    gateway = _gateways(results).get(name)
    if gateway is None:
        return None
    stage = _stage(gateway, workload, "saturation")
    return None if stage is None else float(stage["requests_per_s"])


def core_capacity(results: Mapping[str, Any], name: str, workload: str) -> float | None:
    """Estimate the requests/s that one fully busy gateway core serves: 1000 / CPU ms.

    This is an estimate for the case where the gateway's core, not the upstreams or
    the load generator, is the bottleneck.
    """
    gateway = _gateways(results).get(name)
    if gateway is None:
        return None
    stage = _stage(gateway, workload, "saturation")
    cpu_ms = None if stage is None else stage.get("cpu_ms_per_request")
    return 1000 / cpu_ms if cpu_ms else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return ``numerator / denominator``, or None when either is missing or zero."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def cost_columns(names: set[str]) -> list[tuple[str, str, str]]:
    """Return the cost columns of a run of gateways ``names``: (header, gateway, baseline).

    The policy + audit cost always gets a column. The audit and policy costs get one
    each when the run has the policy-only variant.
    """
    columns = [("policy + audit cost", SUBJECT, UNCONTROLLED)]
    if POLICY_ONLY in names:
        columns.extend(SPLIT_COSTS)
    return columns


def _cost(value: float | None, baseline: float | None) -> str:
    share = ratio(value, baseline)
    return "n/a" if share is None else f"{(1 - share) * 100:.0f} %"


def ratio_table(results: Mapping[str, Any], figure: Any = throughput) -> list[str]:
    """Render a requests/s ``figure`` per gateway and Fonte's ratios to each peer.

    ``figure`` is ``throughput`` (measured at saturation) or ``core_capacity``.
    """
    gateways = results["gateways"]
    names = {g["name"] for g in gateways}
    pairs = [pair for pair in RATIOS if pair in ALWAYS_SHOWN or names & set(pair)]
    header = ["workload", *[f"{g['label']} (req/s)" for g in gateways]]
    header += [f"{left} / {right}" for left, right in pairs]
    costs = cost_columns(names)
    header += [column for column, _, _ in costs]
    rows = []
    for workload in WORKLOADS:
        row = [workload]
        row += [_number(figure(results, g["name"], workload)) for g in gateways]
        row += [_times(ratio(figure(results, left, workload), figure(results, right, workload)))
                for left, right in pairs]
        row += [_cost(figure(results, measured, workload), figure(results, baseline, workload))
                for _, measured, baseline in costs]
        rows.append(row)
    return _table(header, rows)


def _round_throughput(results: Mapping[str, Any], name: str, workload: str,
                      index: int) -> float | None:
    gateway = _gateways(results).get(name)
    rounds = [] if gateway is None else gateway["workloads"].get(workload, {}).get("rounds", [])
    return float(rounds[index]["saturation"]["requests_per_s"]) if index < len(rounds) else None


def round_count(results: Mapping[str, Any]) -> int:
    """Return the largest number of rounds that a gateway ran a workload for, at least 1."""
    counts = [len(stages.get("rounds", [])) for gateway in results["gateways"]
              for stages in gateway.get("workloads", {}).values()]
    return max([1, *counts])


def round_table(results: Mapping[str, Any]) -> list[str]:
    """Render the throughput ratios of each round on its own, to show their spread.

    Returns no lines when the gateways ran one round.
    """
    rounds = round_count(results)
    if rounds < 2:
        return []
    names = {g["name"] for g in results["gateways"]}
    pairs = [pair for pair in RATIOS if pair in ALWAYS_SHOWN or names & set(pair)]
    costs = cost_columns(names)
    header = ["workload", "round", *[f"{left} / {right}" for left, right in pairs],
              *[column for column, _, _ in costs]]
    rows = []
    for workload in WORKLOADS:
        for index in range(rounds):
            row = [workload, str(index + 1)]
            row += [_times(ratio(_round_throughput(results, left, workload, index),
                                 _round_throughput(results, right, workload, index)))
                    for left, right in pairs]
            row += [_cost(_round_throughput(results, measured, workload, index),
                          _round_throughput(results, baseline, workload, index))
                    for _, measured, baseline in costs]
            rows.append(row)
    return _table(header, rows)


def latency_table(results: Mapping[str, Any]) -> list[str]:
    """Render p50 / p95 / p99 in milliseconds at the fixed rate (medians over the rounds)."""
    gateways = results["gateways"]
    rates = results["settings"]["fixed_rates"]
    header = ["workload (fixed rate)", *[g["label"] for g in gateways]]
    rows = []
    for workload in WORKLOADS:
        row = [f"{workload} at {rates[workload]:g} req/s"]
        for gateway in gateways:
            stage = _stage(gateway, workload, "fixed_rate")
            if stage is None:
                row.append("n/a")
                continue
            latency = stage["latency_ms"]
            cell = " / ".join(_number(latency[p]) for p in ("p50", "p95", "p99"))
            if stage.get("rate", rates[workload]) != rates[workload]:
                cell += f" (at {stage['rate']:g} req/s)"
            row.append(cell)
        rows.append(row)
    return _table(header, rows)


def cost_table(results: Mapping[str, Any]) -> list[str]:
    """Render CPU time per request, upstream requests per query and peak RSS."""
    gateways = results["gateways"]
    header = ["figure", *[g["label"] for g in gateways]]
    rows = []
    for workload in WORKLOADS:
        cpu_row = [f"{workload} CPU ms per request"]
        share_row = [f"{workload} gateway core busy"]
        upstream_row = [f"{workload} upstream requests per query"]
        for gateway in gateways:
            stage = _stage(gateway, workload, "saturation") or {}
            cpu_row.append(_number(stage.get("cpu_ms_per_request"), 2))
            share = stage.get("gateway_cpu_share")
            share_row.append("n/a" if share is None else f"{share * 100:.0f} %")
            upstream_row.append(_number(stage.get("upstream_requests_per_query"), 2))
        rows += [cpu_row, share_row, upstream_row]
    rows.append(["peak RSS, MiB", *[_number(g.get("peak_rss_mib")) for g in gateways]])
    rows.append(["processes x cores", *[f"{g['workers']} x cpu {g['cpus']}" for g in gateways]])
    return _table(header, rows)


def soak_table(results: Mapping[str, Any]) -> list[str]:
    """Render the RSS of each soaked gateway: after the first minute, at the end, and the growth.

    Returns no lines when no gateway was soaked.
    """
    rows = []
    for gateway in results["gateways"]:
        soak = gateway.get("soak")
        if not soak or not soak["rss_mib"]:
            continue
        series = soak["rss_mib"]
        first = max(rss for seconds, rss in series if seconds <= 60)
        last = series[-1][1]
        rows.append([gateway["label"], f"{soak['workload']} at {soak['rate']:g} req/s",
                     f"{series[-1][0]:g}", _number(first), _number(last),
                     _number(max(rss for _, rss in series)), f"{(last / first - 1) * 100:+.1f} %"])
    if not rows:
        return []
    header = ["gateway", "load", "seconds", "RSS after 1 min, MiB", "RSS at the end, MiB",
              "max RSS, MiB", "end / first minute"]
    return _table(header, rows)


def failures(results: Mapping[str, Any]) -> list[str]:
    """List every failed check: differing responses, statuses, errors, timeouts."""
    found = []
    for gateway in results["gateways"]:
        soak_load = gateway.get("soak", {}).get("load", {})
        for counter in ("non_200", "with_errors", "timeouts", "socket_errors"):
            if soak_load.get(counter):
                found.append(f"{gateway['name']} soak: {soak_load[counter]} "
                             f"{counter.replace('_', ' ')}")
        for workload, stages in gateway.get("workloads", {}).items():
            check = stages.get("check", "not run")
            if check != "ok":
                found.append(f"{gateway['name']} {workload}: {check}")
            for stage_name in ("saturation", "fixed_rate"):
                stage = stages.get(stage_name)
                if stage is None:
                    continue
                for counter in ("non_200", "with_errors", "timeouts", "socket_errors"):
                    if stage.get(counter):
                        sample = stage.get(SAMPLES.get(counter, ""))
                        found.append(f"{gateway['name']} {workload} {stage_name}: "
                                     f"{stage[counter]} {counter.replace('_', ' ')}"
                                     + (f", the first: {sample}" if sample else ""))
    return found


def render(results: Mapping[str, Any]) -> str:
    """Render the whole section that bench/run writes into bench/README.md."""
    run, machine, settings = results["run"], results["machine"], results["settings"]
    versions = ", ".join(f"{name} {version}" for name, version in results["versions"].items())
    lines = [
        f"Run at {run['finished_utc']} against commit `{run['commit']}`"
        f"{' (uncommitted changes)' if run.get('dirty') else ''}"
        f"{', quick mode' if run.get('quick') else ''}. Results file: `{run['results_file']}`.",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpus']} CPUs, "
        f"{machine['memory_gib']:.1f} GiB, {machine['os']}, Python {machine['python']}, "
        f"Node {machine['node']}. 1-minute load average {machine['load_before']:.2f} before "
        f"and {machine['load_after']:.2f} after the run.",
        "",
        f"Settings: {settings['customers']} demo customers, CRM latency "
        f"{settings['crm_latency_ms']:g} ms, ERP latency {settings['erp_latency_ms']:g} ms, "
        f"{settings['connections']} connections (one token each) for "
        f"{settings['saturation_s']:g} s at saturation and {settings['fixed_rate_s']:g} s at "
        f"the fixed rate{_rounds_phrase(settings)}. Each gateway ran as one process pinned to CPU "
        f"{settings['gateway_cpus']}; the upstreams and the load generator shared CPU "
        f"{settings['other_cpus']}. Fonte allowed "
        f"{settings.get('fonte_max_concurrency', 10)} upstream requests in flight per system "
        "(`max_concurrency`).",
        "",
        f"Versions: {versions}.",
        "",
        "Throughput at saturation, measured:",
        "",
        *ratio_table(results),
        "",
        "Estimated requests/s of one fully busy gateway core (1000 / CPU ms per request "
        "in the saturation run):",
        "",
        *ratio_table(results, core_capacity),
        "",
        *_round_lines(results),
        "Latency at a fixed rate, p50 / p95 / p99 in ms:",
        "",
        *latency_table(results),
        "",
        "Cost per request (saturation runs):",
        "",
        *cost_table(results),
        "",
    ]
    soaked = soak_table(results)
    if soaked:
        lines += [f"Soak, RSS sampled every 10 s for {settings['soak_s']:g} s:", "", *soaked, ""]
    failed = failures(results)
    if failed:
        lines += ["Failed checks:", "", *[f"- {failure}" for failure in failed], ""]
    else:
        lines += ["Every response was HTTP 200 without `errors`, and every gateway's response "
                  "to each workload equalled Fonte's.", ""]
    return "\n".join(lines)


def _rounds_phrase(settings: Mapping[str, Any]) -> str:
    rounds = settings.get("rounds", 1)
    if rounds < 2:
        return ""
    return (f", in each of {rounds} rounds. In each round the gateways took turns on one "
            "workload at a time, in the reverse order of the round before. Throughput and "
            "CPU are over all rounds together, latencies the median of the rounds")


def _round_lines(results: Mapping[str, Any]) -> list[str]:
    table = round_table(results)
    if not table:
        return []
    return ["Throughput ratios of each round on its own:", "", *table, ""]


def replace_section(readme: str, section: str) -> str:
    """Return ``readme`` with the text between the peers markers replaced by ``section``."""
    start = readme.find(START_MARKER)
    end = readme.find(END_MARKER)
    if start == -1 or end == -1 or end < start:
        raise ResultsError(f"bench/README.md has no {START_MARKER!r} ... {END_MARKER!r} "
                           "pair; add both lines where the table belongs")
    head = readme[:start + len(START_MARKER)]
    return f"{head}\n{section.rstrip()}\n{readme[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results file written by bench/run")
    parser.add_argument("--readme", type=Path,
                        help="also write the tables into this README between the markers")
    args = parser.parse_args(argv)
    section = render(load_results(args.results))
    print(section)
    if args.readme is not None:
        text = args.readme.read_text(encoding="utf-8")
        args.readme.write_text(replace_section(text, section), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
