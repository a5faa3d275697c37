"""Benchmarks that measure side by side in one run: ingest, train, tune."""
