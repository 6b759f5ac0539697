"""The drills folder's own fixtures (fix_drills.py)."""

from fix_drills import drills  # noqa: F401
