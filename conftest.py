"""Plugins for every test under tests/ and conformance/ (the whole suite)."""

pytest_plugins = ["tests.secret_watch", "tests.audit_watch"]
