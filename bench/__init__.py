"""Benchmarks of deliberate: ``python -m bench`` runs the performance suite (issue 7).

Each module is also runnable on its own (``python -m bench.engine_overhead --help``);
see bench/README.md.
"""
