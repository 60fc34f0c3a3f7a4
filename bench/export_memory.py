"""Peak memory of an export as the run grows: does it stream?

Issue 5 asks that "a run with 100,000 nodes exports with memory that does not grow
with the run's size". This script builds synthetic runs of 10k and 100k nodes
(1,000 and 10,000 tasks of 10 nodes each) straight into a SQLite store, exports
each in a fresh child process, and reads the child's peak resident memory
(``ru_maxrss`` from ``os.wait4``, so each child is measured alone) and its wall
time. Ratios are against the 10k-node run measured in the same invocation.

Each task's tree is what a refine-style run leaves: the root, three generated
candidates (one recorded generator call, ``n=3``), two refinements of each (one
recorded refiner call each), every candidate graded right or wrong by the
grader and scored by a critic, values on [0, 1]: 10 nodes, 18 judgements and 4
model calls per task, texts of a few hundred characters, all distinct (so
deduplication drops nothing and its digest set is as large as it gets).

The child also reports its resident memory after the imports, before the export
(``rss_before_mb``), and when the export has finished (``rss_after_mb``);
``export_growth_mb`` is the peak less the memory before. ``ru_maxrss`` is a peak,
so what grows slowly under an early transient peak shows only in
``rss_after_mb``: with ``dedup`` on that includes the set of 16-byte row digests
(about 100 bytes a distinct row in a Python set), which grows with the number of
distinct rows by design; the ``dedup: false`` case has nothing that grows.

Usage::

    python bench/export_memory.py            # 10k and 100k nodes (~1.5 min), writes results
    python bench/export_memory.py --quick    # 500 and 2,000 nodes, dpo only; writes only with --out
    python bench/export_memory.py --sizes 10000 1000000 --out /tmp/x.json   # any sizes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NODES_PER_TASK = 10

CASES: list[dict[str, Any]] = [
    {"kind": "dpo", "fmt": "jsonl", "dedup": True},
    {"kind": "dpo", "fmt": "jsonl", "dedup": False},
    {"kind": "dpo", "fmt": "parquet", "dedup": True},
    {"kind": "kto", "fmt": "jsonl", "dedup": True},
    {"kind": "sft", "fmt": "jsonl", "dedup": True},
]


# ---------------------------------------------------------------- building a run


SYSTEM = "You are a careful problem solver. Work step by step; end with 'Answer: N'."


def task_rows(run_id: str, i: int, rng: random.Random, now: float) -> dict[str, list[Any]]:
    """One task's attempt, nodes, judgements and model calls, as table rows."""
    from deliberate.tree import make_id

    task = f"task-{i:06d}"
    out: dict[str, list[Any]] = {"attempts": [], "nodes": [], "judgements": [],
                                 "model_calls": []}
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    prompt = (f"A shop sells {a} apples in the morning and {b} in the afternoon. "
              f"How many apples does it sell in the day? (problem {i})")

    def node(parent: str | None, op: str, text: str, role: str, call: str | None,
             key: object) -> str:
        nid = make_id(run_id, task, parent, op, key)
        out["nodes"].append({
            "id": nid, "run_id": run_id, "task_id": task, "parent_id": parent, "role": role,
            "operator": op, "text": text, "answer": None, "depth": 0 if parent is None else 1,
            "status": "done", "visits": 0,
            "value": None if parent is None else round(rng.random(), 3), "call_id": call,
            "sample_index": None, "meta": {}, "created_at": now + len(out["nodes"]) * 1e-3})
        return nid

    def call(cid: str, role: str, user: str) -> None:
        out["model_calls"].append({
            "id": cid, "run_id": run_id, "task_id": task, "node_id": None, "key": cid,
            "model": "sim", "role": role,
            "request": {"messages": [{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": user}]},
            "response": {"choices": []}, "prompt_tokens": 80, "completion_tokens": 60,
            "cost": 0.0, "latency_s": 0.01, "cached": False, "error": None, "created_at": now})

    def judge(nid: str, right: bool) -> None:
        critic = "correct" if rng.random() < 0.7 else "incorrect"
        for role, source, verdict in (
                ("grader", "verifier:answer_match", "correct" if right else "incorrect"),
                ("critic", "model:sim", critic)):
            out["judgements"].append({
                "id": make_id(nid, role), "run_id": run_id, "task_id": task, "node_id": nid,
                "source": source, "role": role, "score": float(verdict == "correct"),
                "scale_min": 0.0, "scale_max": 1.0, "verdict": verdict,
                "critique": f"Checked the sum for {task}: {verdict}.",
                "first_wrong_step": None, "meta": {}, "created_at": now})

    root = node(None, "root", prompt, "task", None, 0)
    gen_call = make_id(run_id, task, "gen")
    call(gen_call, "generator", prompt)
    first: tuple[str, bool] | None = None
    for k in range(3):
        right = rng.random() < 0.5
        answer = a + b if right else a + b + rng.choice((-10, -1, 1, 10))
        text = (f"Morning: {a} apples.\nAfternoon: {b} apples.\nTotal: {a} + {b} = {answer}."
                f"\nAnswer: {answer}\n(sample {k} of {task})")
        g = node(root, "generate", text, "generator", gen_call, k)
        judge(g, right)
        first = first or (g, right)
        ref_call = make_id(run_id, task, "ref", k)
        call(ref_call, "refiner", f"<candidate>{text}</candidate> fix it")
        for r in range(2):
            right2 = rng.random() < 0.6
            ans2 = a + b if right2 else a + b + rng.choice((-2, 2))
            text2 = (f"Morning: {a}.\nAfternoon: {b}.\nSum: {a} + {b} = {ans2}.\n"
                     f"Answer: {ans2}\n(refinement {r} of sample {k}, {task})")
            judge(node(g, "refine", text2, "refiner", ref_call, (k, r)), right2)
    assert first is not None
    out["attempts"].append({
        "run_id": run_id, "task_id": task, "status": "done", "root_id": root,
        "final_node_id": first[0], "answer": None, "correct": first[1],
        "budget_limited": False, "prompt_tokens": 0, "completion_tokens": 0, "calls": 4,
        "cost": 0.0, "latency_s": 0.0, "error": None, "stats": {}, "updated_at": now})
    return out


def build_run(db: Path, tasks: int, seed: int = 0) -> dict[str, int]:
    """A synthetic run of ``tasks`` tasks × 10 nodes, bulk-inserted; returns counts."""
    from sqlalchemy import create_engine, insert

    from deliberate.store import Store, schema

    asyncio.run(Store.open(str(db)).aclose())  # create the schema (migrations)
    rng = random.Random(seed)
    run_id = "bench"
    engine = create_engine(f"sqlite:///{db}")
    counts = {"tasks": tasks, "nodes": 0, "judgements": 0, "calls": 0}
    now = time.time()
    tables = {"attempts": schema.attempts, "nodes": schema.nodes,
              "judgements": schema.judgements, "model_calls": schema.model_calls}
    with engine.begin() as conn:
        conn.execute(insert(schema.runs).values(
            id=run_id, config={"strategy": "refine", "suite": "synthetic", "model": "sim",
                               "strategy_params": {"n": 3, "max_rounds": 2}},
            status="done", created_at=now, updated_at=now, summary={}))
        pending: dict[str, list[Any]] = {name: [] for name in tables}
        for i in range(tasks):
            for name, rows in task_rows(run_id, i, rng, now + i).items():
                pending[name] += rows
            if len(pending["nodes"]) >= 5000 or i == tasks - 1:
                for name, rows in pending.items():
                    conn.execute(insert(tables[name]), rows)
                    rows.clear()
    engine.dispose()
    with engine.connect() as conn:
        for name, key in (("nodes", "nodes"), ("judgements", "judgements"),
                          ("model_calls", "calls")):
            counts[key] = conn.exec_driver_sql(f"SELECT count(*) FROM {name}").scalar_one()
    engine.dispose()
    return counts


# ---------------------------------------------------------------- measuring


def current_rss_kb() -> int:
    """Resident memory now (Linux /proc), else the peak so far."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(db: str, kind: str, fmt: str, dedup: bool, out: str) -> None:
    """Run one export and print what it did (in a fresh process)."""
    from deliberate.export.base import ExportOptions
    from deliberate.export.runner import export_run

    if fmt == "parquet":
        import pyarrow.parquet  # noqa: F401  (imported before the baseline reading)
    before = current_rss_kb()
    t0 = time.perf_counter()
    res = export_run(db, "bench", kind, out, fmt=fmt,
                     options=ExportOptions(dedup=dedup, test_share=0.1))
    seconds = time.perf_counter() - t0
    print(json.dumps({"rows": res.total_rows, "extracted": res.extracted,
                      "tasks_read": res.tasks_read, "seconds": seconds,
                      "rss_before_kb": before, "rss_after_kb": current_rss_kb()}))


def run_child(db: Path, case: dict[str, Any], out: Path) -> dict[str, Any]:
    """Start the child and reap it with wait4, which gives this child's own peak RSS."""
    cmd = [sys.executable, __file__, "--child", str(db), case["kind"], case["fmt"],
           "1" if case["dedup"] else "0", str(out)]
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, text=True, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read(), se.read()
    if proc.returncode != 0:
        raise SystemExit(f"child failed: {stderr.strip()}")
    info = json.loads(stdout.strip().splitlines()[-1])
    return {"rows": info["rows"], "extracted": info["extracted"],
            "tasks_read": info["tasks_read"], "export_s": round(info["seconds"], 2),
            "process_s": round(wall, 2),
            "rss_before_mb": round(info["rss_before_kb"] / 1024, 1),
            "rss_after_mb": round(info["rss_after_kb"] / 1024, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "export_growth_mb": round((usage.ru_maxrss - info["rss_before_kb"]) / 1024, 1)}


def machine() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    return {"cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "commit": commit,
            "load_average_at_start": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="run sizes in nodes (the first is the baseline; default 10000 100000)")
    ap.add_argument("--quick", action="store_true",
                    help="500 and 2,000 nodes, dpo only; writes a result only with --out")
    ap.add_argument("--out", type=Path, default=None,
                    help="result file (default: bench/results/export_memory.json)")
    ap.add_argument("--child", nargs=5, metavar=("DB", "KIND", "FMT", "DEDUP", "OUT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        db, kind, fmt, dedup, out = args.child
        child(db, kind, fmt, dedup == "1", out)
        return
    sizes = args.sizes or ([500, 2_000] if args.quick else [10_000, 100_000])
    out_file = args.out or (None if args.quick else
                            REPO / "bench" / "results" / "export_memory.json")
    results: dict[str, Any] = {"benchmark": "export_memory",
                               "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "command": " ".join(["python", "bench/export_memory.py",
                                                    *(argv if argv is not None
                                                      else sys.argv[1:])]),
                               "machine": machine(), "nodes_per_task": NODES_PER_TASK,
                               "runs": [], "cases": []}
    with tempfile.TemporaryDirectory(prefix="export-memory-") as tmp:
        dbs = {}
        for size in sizes:
            db = Path(tmp) / f"run-{size}.db"
            t0 = time.perf_counter()
            counts = build_run(db, size // NODES_PER_TASK)
            counts["build_s"] = round(time.perf_counter() - t0, 1)
            counts["db_mb"] = round(db.stat().st_size / 2**20, 1)
            results["runs"].append(counts)
            dbs[size] = db
            print(f"built {size:,} nodes: {counts}", file=sys.stderr)
        for case in (CASES[::2][:2] if args.quick else CASES):
            base: dict[str, Any] | None = None
            for size in sizes:
                out = Path(tmp) / f"out-{size}-{case['kind']}-{case['fmt']}-{case['dedup']}"
                m = run_child(dbs[size], case, out)
                row = {**case, "nodes": size, **m}
                if base is None:
                    base = m
                else:
                    row["peak_ratio"] = round(m["peak_rss_mb"] / base["peak_rss_mb"], 3)
                    row["growth_ratio"] = round(
                        m["export_growth_mb"] / max(base["export_growth_mb"], 0.1), 2)
                    row["rows_ratio"] = round(m["rows"] / max(base["rows"], 1), 2)
                results["cases"].append(row)
                print(json.dumps(row), file=sys.stderr)
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out_file}", file=sys.stderr)


if __name__ == "__main__":
    main()
