"""Benchmarks of qlara-events against baselines measured in the same run (``make bench`` / ``make bench-quick``).

See benchmarks/README.md for what each scenario measures and how.
"""
