"""Shared test configuration: every test runs with a bounded wait."""

pytest_plugins = ["tests.plugins.servers"]
