"""The latency server: the sim's OpenAI-compatible app with a configurable time to first
token, output pace, failure rate and concurrency limit, on loopback.

    python -m bench.latency_server --ttft-ms 50 --tokens-per-s 200 --fail-rate 0.01 \
        --max-concurrency 1000

prints ``ready http://127.0.0.1:PORT/v1`` and serves until its standard input closes or
it is interrupted. Benchmarks start it through ``bench._harness.LatencyServer``, in its
own process, so that its CPU is never charged to the engine they measure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence

from deliberate.models.sim import SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.tasks import load_suite


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.latency_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="arithmetic", help="suite whose answers the sim knows")
    p.add_argument("--sim", default="", help="sim parameters as a query, e.g. skill=0.7")
    p.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    p.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the first token")
    p.add_argument("--tokens-per-s", type=float, default=0.0,
                   help="output pace per choice (0: all at once)")
    p.add_argument("--fail-rate", type=float, default=0.0, help="P(a request fails: 429/500)")
    p.add_argument("--max-concurrency", type=int, default=0,
                   help="requests in flight beyond this get 429 (0: unlimited)")
    p.add_argument("--config", default="",
                   help="the whole ServerConfig as JSON (overrides the flags above)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    raw = json.loads(args.config) if args.config else {
        "port": args.port, "ttft_ms": args.ttft_ms, "tokens_per_s": args.tokens_per_s,
        "fail_rate": args.fail_rate, "max_concurrency": args.max_concurrency}
    try:
        config = ServerConfig.model_validate(raw)
        params = SimParams.from_query(args.sim) if args.sim else SimParams()
        suite = load_suite(args.suite)
    except Exception as exc:  # a bad flag: one line, no traceback
        print(f"latency_server: {exc}", file=sys.stderr)
        return 2
    with SimServer(suite, params, config) as srv:
        print(f"ready {srv.base_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            sys.stdin.read()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
