"""Measure one Fonte gateway's CPU time per request under one workload of the peer benchmark.

``bench/run`` measures every gateway and every workload, which takes about 13
minutes. To compare two versions of the code, this script starts the
benchmark's fakes and one Fonte gateway as ``bench/run`` does, pinned with
``taskset`` and with the fakes and the load generator on the other CPUs. It
drives one workload at saturation, one connection and one token per user,
and prints the gateway's CPU milliseconds per completed request for each
round: in all, and in the event loop's thread alone (the rest is mostly the
audit writer's thread).
With ``--py-spy``, it also records the gateway's stacks during each round.

    .venv/bin/python bench/gateway_cpu.py --gateway fonte-on --workload W2 --rounds 3
    .venv/bin/python bench/gateway_cpu.py --workload W1 --py-spy /path/to/py-spy \
        --profile-prefix /tmp/w1

The Node packages of ``bench/peers`` must be installed (``bench/run`` does it).
Every response is checked for its status and for ``errors`` as in
``bench/run``; if any failed, the script exits with status 1 after its rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import peers_bench as bench

FONTE_GATEWAYS = ("fonte-on", "fonte-off", "fonte-policy", "fonte-rest")
WORKLOADS = ("W1", "W2", "W3")
# Counters of load.mjs that mark a failed response.
FAILURES = ("non_200", "with_errors", "timeouts", "socket_errors")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", choices=FONTE_GATEWAYS, default="fonte-on",
                        help="the Fonte variant, as in bench/run (default fonte-on)")
    parser.add_argument("--workload", choices=WORKLOADS, default="W1",
                        help="the workload, as in bench/run (default W1)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="seconds of each measured round (default 10)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="measured rounds, after one 3 s warm-up (default 2)")
    parser.add_argument("--connections", type=int, default=16,
                        help="users, each one connection with its own token (default 16)")
    parser.add_argument("--py-spy", type=Path, default=None,
                        help="py-spy executable: record the gateway during each round "
                             "(`record --nonblocking -r 200 -f raw`); py-spy is not a dependency")
    parser.add_argument("--profile-prefix", type=Path, default=Path("gateway-cpu"),
                        help="py-spy output is written to PREFIX-ROUND.txt")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds above 0")
    return args


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """Return user + system CPU seconds of thread ``tid`` of process ``pid``.

    The gateway's main thread, whose id is the process id, runs the event loop.
    """
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    settings = bench.parse_arguments(["--gateways", args.gateway, "--no-readme",
                                      "--connections", str(args.connections)])
    with tempfile.TemporaryDirectory(prefix="fonte-gateway-cpu-") as temp, \
            bench.services() as running:
        scratch = Path(temp)
        fakes, description = bench.start_fakes(settings, scratch)
        running.append(fakes)
        tokens = bench.issue_tokens(scratch, {"sales", "finance"}, args.connections)
        service, url = bench.start_gateway(args.gateway, settings, scratch, description, {})
        running.append(service)
        first = bench.post(url, tokens["sales"][0],
                           "{ customers(first: 1) { edges { node { id } } } }", {})
        first_id = first["data"]["customers"]["edges"][0]["node"]["id"]
        workload = {w.name: w for w in bench.workloads(first_id, settings.customers)}[
            args.workload]
        files = bench.write_request_files([workload], tokens, scratch)
        body, users = files[f"{workload.name}-body"], files[f"{workload.role}-tokens"]
        pid = service.process.pid
        bench.run_load(url, body, users, args.connections, 3.0, settings.other_cpus)
        failed = False
        for round_number in range(1, args.rounds + 1):
            bench.wait_for_idle(pid)
            spy = None
            if args.py_spy is not None:
                output = Path(f"{args.profile_prefix}-{round_number}.txt")
                spy = subprocess.Popen(
                    # --nonblocking: py-spy does not stop the gateway for each sample,
                    # which slowed the audit writer's thread more than the event loop.
                    [str(args.py_spy), "record", "--nonblocking", "-r", "200", "-f", "raw",
                     "-o", str(output),
                     "-d", f"{args.seconds:.0f}", "-p", str(pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            before = bench.cpu_seconds(pid)
            loop_before = thread_cpu_seconds(pid, pid)
            result = bench.run_load(url, body, users, args.connections, args.seconds,
                                    settings.other_cpus)
            used = bench.cpu_seconds(pid) - before
            loop_used = thread_cpu_seconds(pid, pid) - loop_before
            if spy is not None:
                spy.wait(timeout=args.seconds + 60)
            answered = max(result["requests"], 1)
            print(json.dumps({
                "gateway": args.gateway, "workload": args.workload, "round": round_number,
                "requests_per_s": round(result["requests_per_s"], 1),
                "cpu_ms_per_request": round(used * 1000 / answered, 3),
                "event_loop_cpu_ms_per_request": round(loop_used * 1000 / answered, 3),
                "gateway_cpu_share": round(used / result["duration_s"], 3),
                "non_200": result["non_200"], "with_errors": result["with_errors"],
                "timeouts": result["timeouts"], "socket_errors": result["socket_errors"],
            }), flush=True)
            bad = {counter: result[counter] for counter in FAILURES if result[counter]}
            if bad:
                failed = True
                print(f"round {round_number} had failed responses: {bad}; the first error "
                      f"body: {result.get('errors_sample') or result.get('non_200_sample')}",
                      file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
