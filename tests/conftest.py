"""Fixtures are plugins (fix_*.py), as in psycopg's test suite: the ones every
area shares live here; an area's own (tests/proxy/fix_proxy.py,
tests/drills/fix_drills.py) are loaded by that folder's conftest.py.

Areas: unit/ (pure, no servers), stack/ (the session's embedded stack),
proxy/ (the fault proxy alone), e2e/ (whole `msdb` commands), drills/.
`python -m pytest -m "not slow"` is the fast loop.
"""

pytest_plugins = ["fix_cli", "fix_stack"]
