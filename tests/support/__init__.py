"""Helpers shared by the integration tests: infrastructure discovery, a live server, event builders."""
