"""Fixtures are plugins (fix_*.py), as in psycopg's test suite."""

pytest_plugins = ["fix_stack", "fix_proxy"]
