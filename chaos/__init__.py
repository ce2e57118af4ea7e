"""Failure tests: a three-broker Kafka cluster, the service as separate processes, faults under load, exact accounting.

``python -m chaos.run`` (``make chaos``) runs every scenario and regenerates the table in docs/reliability.md;
``python -m chaos.run --short`` is the reduced version run by tests/integration/test_chaos_short.py.
"""
