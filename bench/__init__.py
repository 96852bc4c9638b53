"""Benchmarks against peers; run each as a script: ``python bench/<topic>.py``."""
