"""Benchmarks. Each prints a table and writes it, with its command and machine, to docs/benchmarks.md."""
