"""Postgres: migrations (numbered SQL files) and one module of queries per aggregate."""
