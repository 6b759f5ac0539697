"""Reports built from a run directory alone (never from Locust or chaos objects)."""
