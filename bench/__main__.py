"""Run the performance benchmarks (issue 7) and write their results and one summary.

    pip install -e '.[bench]' && python -m bench          # everything, ~15 min on 2 cores
    python -m bench --quick --out-dir /tmp/bench          # every script's small mode
    python -m bench --only engine_overhead,concurrency

Each benchmark runs in its own process (its memory and CPU figures are its own) and
writes ``<out-dir>/<name>.json``; ``<out-dir>/SUMMARY.md`` then gathers the headline
ratios, the targets, each benchmark's section and the before/after figures of the
optimisations. PostgreSQL for ``store_scale`` comes from ``DELIBERATE_BENCH_POSTGRES_URL``
or ``DELIBERATE_TEST_POSTGRES_URL``, else from ``.ci/postgres.sh`` (which installs and
starts a throwaway server); the peers (optillm, DSPy) are installed by ``bench.peers``
into their own virtual environment under ``bench/.peers``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._harness import REPO, RESULTS, fmt, machine

ORDER = ("engine_overhead", "concurrency", "critical_path", "critical_path_500ms",
         "store_scale", "peers")
# name -> (module, extra arguments of a full run); a name without an entry is its module
VARIANTS: dict[str, tuple[str, list[str]]] = {
    # best-of-N at a latency nearer real models', beside the 100 ms of the main run:
    # the excess per wave is fixed, so the ratio to the bound falls as latency grows
    "critical_path_500ms": ("critical_path", ["--strategies", "best_of_n", "--ttft-ms", "500"]),
}


def module_of(name: str) -> str:
    return VARIANTS.get(name, (name, []))[0]
BEFORE = RESULTS / "engine_overhead_before.json"
CONCURRENCY_BEFORE = RESULTS / "concurrency_before.json"


def postgres_url() -> str | None:
    """A PostgreSQL URL for the store benchmark, starting a throwaway server if need be."""
    for name in ("DELIBERATE_BENCH_POSTGRES_URL", "DELIBERATE_TEST_POSTGRES_URL"):
        if os.environ.get(name):
            return os.environ[name]
    script = REPO / ".ci" / "postgres.sh"
    if not script.exists():
        return None
    r = subprocess.run(["bash", str(script)], cwd=REPO, capture_output=True, text=True,
                       timeout=900)
    for line in r.stdout.splitlines():
        if "DELIBERATE_TEST_POSTGRES_URL=" in line:
            return line.split("=", 1)[1].strip()
    print(f"bench: no PostgreSQL ({r.stderr.strip().splitlines()[-1:] or 'no output'}); "
          "store_scale runs on SQLite only", file=sys.stderr)
    return None


def run_one(name: str, out: Path, quick: bool, env: dict[str, str]) -> dict[str, Any]:
    module, extra = VARIANTS.get(name, (name, []))
    cmd = [sys.executable, "-m", f"bench.{module}", "--out", str(out)]
    if quick:
        cmd.append("--quick")
    else:
        cmd += extra
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    started = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env)
    took = round(time.perf_counter() - started, 1)
    if r.returncode != 0 or not out.exists():
        return {"name": name, "ok": False, "seconds": took,
                "error": f"exit status {r.returncode}; see its output above"}
    return {"name": name, "ok": True, "seconds": took}


def summary(results: dict[str, dict[str, Any]], runs: list[dict[str, Any]],
            out_dir: Path) -> str:
    lines = ["# Performance summary (issue 7)", "",
             "Written by `python -m bench`; every figure below is in the JSON file of its "
             "benchmark in this folder, with the machine it ran on.", ""]
    m = machine()
    lines += [f"Machine: {m['cpu_count']} cores, Python {m['python']}, {m['platform']}, "
              f"commit `{(m['commit'] or '?')[:10]}`.", "",
              "## Headlines and targets", "",
              "| benchmark | figure | value |", "|---|---|---|"]
    for name in ORDER:
        res = results.get(name)
        if res is None:
            continue
        for key, value in res.get("headline", {}).items():
            lines.append(f"| {name} | {key} | {fmt(value)} |")
    lines += ["", "| target | measured | limit | status |", "|---|---|---|---|"]
    for name in ORDER:
        for t in (results.get(name) or {}).get("targets", []):
            status = {True: "met", False: "**missed**", None: "not judged"}[t.get("met")]
            lines.append(f"| {t['target']} | {fmt(t.get('value'))} | {fmt(t.get('limit'))} "
                         f"| {status} |")
    failed = [r for r in runs if not r["ok"]]
    if failed:
        lines += ["", "Benchmarks that did not finish: " + "; ".join(
            f"`{r['name']}` ({r['error']})" for r in failed)]
    before = out_dir / BEFORE.name if (out_dir / BEFORE.name).exists() else BEFORE
    if "engine_overhead" in results and before.exists():
        lines += ["", *before_after(json.loads(before.read_text()),
                                    results["engine_overhead"])]
    c_before = (out_dir / CONCURRENCY_BEFORE.name if (out_dir / CONCURRENCY_BEFORE.name).exists()
                else CONCURRENCY_BEFORE)
    if "concurrency" in results and c_before.exists():
        lines += ["", *concurrency_before_after(json.loads(c_before.read_text()),
                                                results["concurrency"])]
    for name in ORDER:
        res = results.get(name)
        if res is None:
            continue
        module = importlib.import_module(f"bench.{module_of(name)}")
        lines += ["", module.markdown(res)]
    lines += ["", "## Run times", "", "| benchmark | seconds |", "|---|---|"]
    lines += [f"| {r['name']} | {r['seconds']} |" for r in runs]
    return "\n".join(lines) + "\n"


def before_after(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Engine CPU per call before the optimisations and now, from the same benchmark."""
    old = {r["strategy"]: r for r in before["results"]}
    lines = ["## Before and after the optimisations", "",
             f"Engine CPU per model call (ms, median): before = deliberate at commit "
             f"`{_source(before)}`, after = commit `{_source(after)}`; each with its own "
             "bare-client baseline from the same run.", "",
             "| workload | before engine | before engine − bare | after engine | "
             "after engine − bare | after / before |", "|---|---|---|---|---|---|"]
    for r in after["results"]:
        b = old.get(r["strategy"])
        if b is None:
            continue
        lines.append(
            f"| {r['strategy']} | {b['cpu_ms_per_call']['engine']:.3f} | "
            f"{b['overhead_ms_per_call']:.3f} | {r['cpu_ms_per_call']['engine']:.3f} | "
            f"{r['overhead_ms_per_call']:.3f} | "
            f"{r['cpu_ms_per_call']['engine'] / b['cpu_ms_per_call']['engine']:.2f} |")
    return lines


def concurrency_before_after(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Calls in flight and per second at each level, before the optimisations and now."""
    old = {r["concurrency"]: r for r in before["results"]}
    lines = [f"Concurrency before (deliberate at commit `{_source(before)}`) and after "
             f"(`{_source(after)}`), engine only:", "",
             "| C | in flight before | in flight after | calls/s before | calls/s after | "
             "errors before | errors after | peak RSS MiB before | after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in after["results"]:
        b = old.get(r["concurrency"])
        if b is None:
            continue
        e, f = b["engine"], r["engine"]
        lines.append(f"| {r['concurrency']} | {e['max_in_flight']} | {f['max_in_flight']} | "
                     f"{e['calls_per_s']:.0f} | {f['calls_per_s']:.0f} | {e['errors']} | "
                     f"{f['errors']} | {e['memory']['peak_mb']:.0f} | "
                     f"{f['memory']['peak_mb']:.0f} |")
    return lines


def _source(result: dict[str, Any]) -> str:
    """The commit of the deliberate source a result measured."""
    m = result["machine"]
    return str(m.get("deliberate_commit") or m.get("commit") or "?")[:10]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="every benchmark's small mode")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(ORDER)}")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where the JSON files and SUMMARY.md go (default bench/results; "
                        "a --quick run needs one)")
    args = p.parse_args(argv)
    names = [n for n in (args.only.split(",") if args.only else ORDER) if n]
    unknown = sorted(set(names) - set(ORDER))
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(ORDER)}")
    if args.quick:  # a variant's quick mode is its module's: run that once
        names = [n for n in names if n not in VARIANTS]
    if args.quick and args.out_dir is None:
        p.error("--quick needs --out-dir: quick figures must not replace the committed ones")
    out_dir = args.out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if "store_scale" in names:
        url = postgres_url()
        if url:
            env["DELIBERATE_TEST_POSTGRES_URL"] = url
    runs = [run_one(n, out_dir / f"{n}.json", args.quick, env) for n in names]
    results = {r["name"]: json.loads((out_dir / f"{r['name']}.json").read_text())
               for r in runs if r["ok"]}
    # benchmarks not run this time keep their last results in the summary
    for n in ORDER:
        path = out_dir / f"{n}.json"
        if n not in results and path.exists():
            results[n] = json.loads(path.read_text())
    (out_dir / "SUMMARY.md").write_text(summary(results, runs, out_dir))
    print(f"\nwrote {out_dir / 'SUMMARY.md'}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
