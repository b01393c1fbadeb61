"""Tables and checks of the peer benchmark report, on a recorded results file and small cases."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = Path(__file__).with_name("peers_sample.json")


def _load_report() -> ModuleType:
    # bench/ is a folder of scripts, not a package, so the module is loaded by path.
    spec = importlib.util.spec_from_file_location("peers_report", REPO / "bench/peers_report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load_report()


def _stage(requests_per_s: float, cpu_ms: float, p50: float = 10.0) -> dict[str, Any]:
    return {"requests": 100, "duration_s": 10.0, "requests_per_s": requests_per_s,
            "latency_ms": {"p50": p50, "p95": p50 * 2, "p99": p50 * 3, "max": p50 * 4},
            "non_200": 0, "non_200_statuses": {}, "non_200_sample": None, "with_errors": 0,
            "timeouts": 0, "socket_errors": 0, "cpu_ms_per_request": cpu_ms,
            "gateway_cpu_share": 0.5, "upstream_requests_per_query": 2.0}


def _gateway(name: str, requests_per_s: float, cpu_ms: float) -> dict[str, Any]:
    return {"name": name, "label": name.upper(), "workers": 1, "cpus": "1",
            "peak_rss_mib": 100.0,
            "workloads": {w: {"check": "ok", "saturation": _stage(requests_per_s, cpu_ms),
                              "fixed_rate": _stage(requests_per_s / 2, cpu_ms)}
                          for w in ("W1", "W2", "W3")}}


@pytest.fixture
def results() -> dict[str, Any]:
    return {
        "run": {"finished_utc": "2026-12-04 23:00:00 UTC", "commit": "abc1234", "dirty": False,
                "quick": False, "results_file": "bench/results/peers-x.json"},
        "machine": {"cpu_model": "Test CPU", "cpus": 2, "memory_gib": 24.0, "os": "Linux 6",
                    "python": "3.11.7", "node": "20.20.2", "load_before": 1.0,
                    "load_after": 2.0},
        "versions": {"fonte": "0.1.0"},
        "settings": {"customers": 100, "crm_latency_ms": 0.0, "erp_latency_ms": 0.0,
                     "connections": 16, "saturation_s": 15.0, "fixed_rate_s": 15.0,
                     "warmup_s": 3.0, "gateway_cpus": "1", "other_cpus": "0",
                     "fonte_max_concurrency": 64,
                     "fixed_rates": {"W1": 50, "W2": 20, "W3": 10}},
        "gateways": [_gateway("fonte-on", 80.0, 10.0), _gateway("fonte-off", 100.0, 8.0),
                     _gateway("apollo", 160.0, 5.0), _gateway("hive", 40.0, 20.0)],
    }


def test_ratio_table_rows(results: dict[str, Any]) -> None:
    table = report.ratio_table(results)

    assert table[0] == ("| workload | FONTE-ON (req/s) | FONTE-OFF (req/s) | APOLLO (req/s) "
                        "| HIVE (req/s) | fonte-on / apollo | fonte-on / hive "
                        "| policy + audit cost |")
    assert table[1] == "|---|---|---|---|---|---|---|---|"
    assert table[2] == "| W1 | 80.0 | 100.0 | 160.0 | 40.0 | 0.50x | 2.00x | 20 % |"
    assert len(table) == 5


def test_core_capacity_table(results: dict[str, Any]) -> None:
    table = report.ratio_table(results, report.core_capacity)

    assert table[3] == "| W2 | 100.0 | 125.0 | 200.0 | 50.0 | 0.50x | 2.00x | 20 % |"


def test_ratio_table_missing_peer(results: dict[str, Any]) -> None:
    results["gateways"] = results["gateways"][:1]

    table = report.ratio_table(results)

    assert table[2] == "| W1 | 80.0 | n/a | n/a | n/a |"


def test_ratio_table_rest_pair(results: dict[str, Any]) -> None:
    results["gateways"] += [_gateway("fonte-rest", 60.0, 12.0), _gateway("hive-rest", 30.0, 24.0)]

    table = report.ratio_table(results)

    assert table[0].endswith("| fonte-on / apollo | fonte-on / hive | fonte-rest / hive-rest "
                             "| policy + audit cost |")
    assert table[2] == ("| W1 | 80.0 | 100.0 | 160.0 | 40.0 | 60.0 | 30.0 | 0.50x | 2.00x "
                        "| 2.00x | 20 % |")


def test_ratio_table_splits_cost(results: dict[str, Any]) -> None:
    results["gateways"].append(_gateway("fonte-policy", 96.0, 8.5))

    table = report.ratio_table(results)

    assert table[0].endswith("| policy + audit cost | audit cost | policy cost |")
    assert table[2] == ("| W1 | 80.0 | 100.0 | 160.0 | 40.0 | 96.0 | 0.50x | 2.00x "
                        "| 20 % | 17 % | 4 % |")


def test_ratio_table_split_without_off(results: dict[str, Any]) -> None:
    results["gateways"] = [_gateway("fonte-on", 80.0, 10.0),
                           _gateway("fonte-policy", 100.0, 8.0)]

    table = report.ratio_table(results)

    assert table[2] == "| W1 | 80.0 | 100.0 | n/a | n/a | n/a | 20 % | n/a |"


def test_ratio_table_rest_pair_one_side(results: dict[str, Any]) -> None:
    results["gateways"] = [_gateway("hive-rest", 30.0, 24.0)]

    table = report.ratio_table(results)

    assert table[2] == "| W1 | 30.0 | n/a | n/a | n/a | n/a |"


def test_latency_and_cost_tables(results: dict[str, Any]) -> None:
    latency = report.latency_table(results)
    cost = report.cost_table(results)

    assert latency[2] == ("| W1 at 50 req/s | 10.0 / 20.0 / 30.0 | 10.0 / 20.0 / 30.0 "
                          "| 10.0 / 20.0 / 30.0 | 10.0 / 20.0 / 30.0 |")
    assert cost[2] == "| W1 CPU ms per request | 10.00 | 8.00 | 5.00 | 20.00 |"
    assert cost[3] == "| W1 gateway core busy | 50 % | 50 % | 50 % | 50 % |"
    assert cost[-2] == "| peak RSS, MiB | 100.0 | 100.0 | 100.0 | 100.0 |"


def test_latency_table_lowered_rate(results: dict[str, Any]) -> None:
    results["gateways"][3]["workloads"]["W1"]["fixed_rate"]["rate"] = 5.0

    row = report.latency_table(results)[2]

    assert row.endswith("| 10.0 / 20.0 / 30.0 (at 5 req/s) |")


def test_soak_table_growth(results: dict[str, Any]) -> None:
    results["settings"]["soak_s"] = 120.0
    results["gateways"][0]["soak"] = {
        "workload": "W1", "rate": 20.0, "load": {"non_200": 0},
        "rss_mib": [[10.0, 100.0], [60.0, 110.0], [90.0, 130.0], [120.0, 121.0]],
    }

    table = report.soak_table(results)

    assert table[2] == "| FONTE-ON | W1 at 20 req/s | 120 | 110.0 | 121.0 | 130.0 | +10.0 % |"
    assert len(table) == 3
    assert "Soak, RSS sampled every 10 s for 120 s:" in report.render(results)


def test_soak_table_empty_without_soak(results: dict[str, Any]) -> None:
    assert report.soak_table(results) == []


def test_failures_lists_each_counter(results: dict[str, Any]) -> None:
    hive = results["gateways"][3]["workloads"]["W2"]
    hive["check"] = "answer differs from Fonte's at data.customers"
    hive["saturation"]["non_200"] = 3
    hive["fixed_rate"]["timeouts"] = 1

    assert report.failures(results) == [
        "hive W2: answer differs from Fonte's at data.customers",
        "hive W2 saturation: 3 non 200",
        "hive W2 fixed_rate: 1 timeouts",
    ]


def test_failures_quote_first_samples(results: dict[str, Any]) -> None:
    stage = results["gateways"][3]["workloads"]["W1"]["saturation"]
    stage["with_errors"] = 2
    stage["errors_sample"] = '"errors":[{"message":"Unexpected error."}]}'
    stage["non_200"] = 1
    stage["non_200_sample"] = "Bad Gateway"

    assert report.failures(results) == [
        "hive W1 saturation: 1 non 200, the first: Bad Gateway",
        'hive W1 saturation: 2 with errors, the first: "errors":[{"message":"Unexpected '
        'error."}]}',
    ]


def test_failures_empty_when_clean(results: dict[str, Any]) -> None:
    assert report.failures(results) == []


def test_render_states_settings(results: dict[str, Any]) -> None:
    text = report.render(results)

    assert "Run at 2026-12-04 23:00:00 UTC against commit `abc1234`." in text
    assert "16 connections (one token each)" in text
    assert "Fonte allowed 64 upstream requests in flight per system" in text
    assert "Failed checks" not in text


@pytest.mark.parametrize(("expected", "actual", "difference"), [
    ({"a": [1, {"b": "x"}]}, {"a": [1, {"b": "x"}]}, None),
    ({"a": [1, {"b": "x"}]}, {"a": [1, {"b": "y"}]}, "data.a[1].b"),
    ({"a": [1, 2]}, {"a": [1]}, "data.a (2 items expected, 1 received)"),
    ({"a": 1}, {"a": 1, "c": 2}, "data.c (present on one side only)"),
    ({"a": None}, {"a": {}}, "data.a"),
])
def test_first_difference(expected: Any, actual: Any, difference: str | None) -> None:
    assert report.first_difference(expected, actual) == difference


def test_replace_section_keeps_the_rest() -> None:
    readme = (f"# Title\n\n{report.START_MARKER}\nold table\n{report.END_MARKER}\n\n"
              "## Next\n")

    replaced = report.replace_section(readme, "new table\n")

    assert replaced == (f"# Title\n\n{report.START_MARKER}\nnew table\n{report.END_MARKER}\n\n"
                        "## Next\n")


def test_replace_section_without_markers() -> None:
    with pytest.raises(report.ResultsError, match=r"has no .* pair; add both lines"):
        report.replace_section("# Title\n", "table")


def test_load_results_missing_member(tmp_path: Path, results: dict[str, Any]) -> None:
    del results["settings"]
    path = tmp_path / "peers.json"
    path.write_text(json.dumps(results))

    with pytest.raises(report.ResultsError, match="has no 'settings' member"):
        report.load_results(path)


def test_recorded_sample_renders() -> None:
    recorded = report.load_results(SAMPLE)
    text = report.render(recorded)

    names = [gateway["name"] for gateway in recorded["gateways"]]
    assert names == ["fonte-on", "fonte-off", "apollo", "hive"]
    assert "| workload | Fonte, policy + audit (req/s) |" in text
    assert report.failures(recorded) == []
    for gateway in recorded["gateways"]:
        for workload in ("W1", "W2", "W3"):
            stage = gateway["workloads"][workload]["saturation"]
            assert stage["requests"] > 0
            assert stage["cpu_ms_per_request"] > 0


def test_recorded_sample_unchanged_by_render() -> None:
    recorded = report.load_results(SAMPLE)
    before = copy.deepcopy(recorded)

    report.render(recorded)

    assert recorded == before


def _round(requests: int, duration_s: float, cpu_ms: float, p50: float,
           rate: float = 20.0) -> dict[str, Any]:
    saturation = {**_stage(requests / duration_s, cpu_ms, p50), "mode": "saturation",
                  "requests": requests, "duration_s": duration_s,
                  "upstream_requests_per_query": 4.0}
    fixed = {**_stage(rate, cpu_ms, p50), "mode": "fixed_rate", "rate": rate}
    return {"saturation": saturation, "fixed_rate": fixed}


def test_merge_rounds_adds_counts() -> None:
    first = _round(1000, 10.0, 2.0, p50=5.0)
    second = _round(3000, 10.0, 1.0, p50=9.0, rate=10.0)
    second["saturation"]["with_errors"] = 2
    second["saturation"]["errors_sample"] = '{"errors":[]}'

    merged = report.merge_rounds([first, second])

    saturation = merged["saturation"]
    assert saturation["requests"] == 4000
    assert saturation["duration_s"] == 20.0
    assert saturation["requests_per_s"] == 200.0
    assert saturation["cpu_ms_per_request"] == 1.25  # (1000 x 2 + 3000 x 1) / 4000
    assert saturation["gateway_cpu_share"] == 0.25  # 5 s of CPU in 20 s
    assert saturation["upstream_requests_per_query"] == 4.0
    assert saturation["latency_ms"]["p50"] == 7.0
    assert saturation["with_errors"] == 2
    assert saturation["errors_sample"] == '{"errors":[]}'
    assert merged["fixed_rate"]["rate"] == 10.0
    assert merged["fixed_rate"]["latency_ms"]["p99"] == 21.0


def test_merge_one_round_unchanged() -> None:
    only = _round(1500, 15.0, 2.5, p50=6.0)

    merged = report.merge_rounds([only])

    assert merged["saturation"]["requests_per_s"] == 100.0
    assert merged["saturation"]["cpu_ms_per_request"] == 2.5
    assert merged["saturation"]["latency_ms"] == only["saturation"]["latency_ms"]


def test_round_table_each_round(results: dict[str, Any]) -> None:
    per_round = {"fonte-on": (80.0, 90.0), "fonte-off": (100.0, 100.0),
                 "apollo": (160.0, 100.0), "hive": (40.0, 45.0)}
    for gateway in results["gateways"]:
        for stages in gateway["workloads"].values():
            stages["rounds"] = [_round(int(rate * 10), 10.0, 1.0, p50=5.0)
                                for rate in per_round[gateway["name"]]]
    results["settings"]["rounds"] = 2

    table = report.round_table(results)
    text = report.render(results)

    assert table[0] == ("| workload | round | fonte-on / apollo | fonte-on / hive "
                        "| policy + audit cost |")
    assert table[2] == "| W1 | 1 | 0.50x | 2.00x | 20 % |"
    assert table[3] == "| W1 | 2 | 0.90x | 2.00x | 10 % |"
    assert len(table) == 8
    assert "in each of 2 rounds" in text
    assert "Throughput ratios of each round on its own:" in text


def test_round_table_splits_cost(results: dict[str, Any]) -> None:
    results["gateways"].append(_gateway("fonte-policy", 96.0, 8.5))
    per_round = {"fonte-on": (80.0, 90.0), "fonte-off": (100.0, 100.0),
                 "fonte-policy": (100.0, 90.0), "apollo": (160.0, 100.0), "hive": (40.0, 45.0)}
    for gateway in results["gateways"]:
        for stages in gateway["workloads"].values():
            stages["rounds"] = [_round(int(rate * 10), 10.0, 1.0, p50=5.0)
                                for rate in per_round[gateway["name"]]]

    table = report.round_table(results)

    assert table[0].endswith("| policy + audit cost | audit cost | policy cost |")
    assert table[2] == "| W1 | 1 | 0.50x | 2.00x | 20 % | 20 % | 0 % |"
    assert table[3] == "| W1 | 2 | 0.90x | 2.00x | 10 % | 0 % | 10 % |"


def test_round_table_empty_for_one_round(results: dict[str, Any]) -> None:
    assert report.round_count(results) == 1
    assert report.round_table(results) == []
    assert "Throughput ratios of each round" not in report.render(results)
