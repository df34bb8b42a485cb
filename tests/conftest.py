"""Shared pytest configuration."""

pytest_plugins = ["tests.fake_nvml.conftest_plugin"]
