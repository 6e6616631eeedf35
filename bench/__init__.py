"""Benchmarks of vizgate's tunnel against websockify and raw TCP: ``python -m bench.run``."""
