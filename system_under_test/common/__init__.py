"""Shared plumbing of the services: app factory, errors, DB pool, peers, bus, metrics."""
