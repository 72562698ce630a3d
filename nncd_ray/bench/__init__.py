"""Benchmarks that report the figures of ``shared/bench/PROTOCOL.md`` (Speed), one run per machine.

Each benchmark is a runnable module (``python -m nncd_ray.bench.<name> --help``) that prints a table
and writes JSON. Figures are always relative to something measured in the same run (a naive
implementation, the machine's dense matmul rate), never lone absolute times.
"""
