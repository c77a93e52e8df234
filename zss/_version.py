"""The zss version (kept equal to pyproject's ``version``; tests/test_install.py checks it). Imports nothing."""

__version__ = "0.1.0"
