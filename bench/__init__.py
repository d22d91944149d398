"""Benchmark scripts: each prints figures measured side by side in one run (see bench/README.md)."""
