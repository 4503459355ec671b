#!/usr/bin/env python3
"""Builds the test binaries once and runs them side by side.

`cargo test` runs one test binary after another, and most of their time is spent waiting on
Postgres, on the daemon's polls and on the app simulators, not on the two cores. Running
several binaries at once (each on its own cluster, as the harness starts one per process)
is what keeps the suite within CI's time. A failing binary's whole output is printed; a
passing one prints one line with its time, so a slow test shows up in CI's log.

usage: run_tests.py [--jobs N] [--pg MAJOR=BINDIR ...] [--pg-tests a,b,c]
  --pg: a PostgreSQL build (tests/pg-versions) on which the --pg-tests binaries run again.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

DURATIONS = "test-durations.json"


def build():
    """Builds every test target; returns (name, executable) for each binary with tests."""
    out = subprocess.run(
        ["cargo", "test", "--no-run", "--quiet", "--message-format=json-render-diagnostics"],
        stdout=subprocess.PIPE,
        check=True,
        text=True,
    ).stdout
    bins = []
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg["profile"]["test"]:
            continue
        target = msg["target"]
        kind = target["kind"][0]
        name = target["name"] if kind == "test" else f"{kind}:{target['name']}"
        bins.append((name, msg["executable"]))
    return bins


def target_dir():
    meta = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version=1"],
        stdout=subprocess.PIPE,
        check=True,
        text=True,
    ).stdout
    return json.loads(meta)["target_directory"]


def run(job):
    label, argv, env = job
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return label, proc.returncode, proc.stdout, time.monotonic() - started


def summary(output):
    lines = [l for l in output.splitlines() if l.startswith("test result:")]
    return lines[-1] if lines else "(no test result line)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--pg", action="append", default=[])
    ap.add_argument("--pg-tests", default="")
    args = ap.parse_args()

    bins = build()
    base = dict(os.environ)
    jobs = [(name, [exe, "--quiet"], base) for name, exe in bins]
    jobs.append(("doctests", ["cargo", "test", "--doc", "--quiet"], base))
    wanted = [t for t in args.pg_tests.split(",") if t]
    known = {name for name, _ in bins}
    missing = [t for t in wanted if t not in known]
    if missing:
        sys.exit(f"--pg-tests names test binaries that do not exist: {', '.join(missing)}")
    for spec in args.pg:
        major, bindir = spec.split("=", 1)
        env = {k: v for k, v in base.items() if k != "SQLITE2PG_TEST_PG"}
        env["SQLITE2PG_TEST_PGBIN"] = bindir
        for name, exe in bins:
            if name in wanted:
                jobs.append((f"{name} (PostgreSQL {major})", [exe, "--quiet"], env))

    # Longest first, from the last run's times when there are any, so the tail is short.
    times_path = os.path.join(target_dir(), DURATIONS)
    try:
        with open(times_path) as f:
            last = json.load(f)
    except (OSError, ValueError):
        last = {}
    jobs.sort(key=lambda j: -last.get(j[0], 0.0))

    started = time.monotonic()
    failed = []
    times = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for done in as_completed([pool.submit(run, job) for job in jobs]):
            label, code, output, secs = done.result()
            times[label] = secs
            if code == 0:
                print(f"ok     {secs:6.1f}s  {label}: {summary(output)}", flush=True)
            else:
                failed.append(label)
                print(f"FAILED {secs:6.1f}s  {label} (exit {code}):\n{output}", flush=True)
    with open(times_path, "w") as f:
        json.dump(times, f, indent=1, sort_keys=True)
    total = time.monotonic() - started
    print(f"{len(jobs)} test binaries in {total:.0f} s ({sum(times.values()):.0f} s of tests, {args.jobs} at a time)")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
