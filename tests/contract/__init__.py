"""Contract tests: one suite per store Protocol, run against every implementation."""
