"""Benchmarks that compare against a baseline measured in the same run and print ratios (`python -m ssd_ds.bench`)."""
