"""Kernel tests: run as root inside the test VM (tests/vm/run)."""
