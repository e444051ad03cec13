"""Benchmarks of the model and the service; run from the repository root (`make bench`)."""
