"""The drills folder's own fixtures (fix_drills.py)."""

from fix_drills import drills, geo_drills  # noqa: F401
