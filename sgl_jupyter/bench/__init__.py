"""Benchmarks that run their peers in the same process and report ratios. Each returns a pandas
DataFrame; ``python -m sgl_jupyter.bench NAME`` prints the table and writes JSON."""
