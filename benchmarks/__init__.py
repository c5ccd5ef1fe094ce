"""Benchmarks of curator-worker against local pools, Dask and naive Celery (see README.md)."""
