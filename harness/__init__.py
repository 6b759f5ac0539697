"""Stack lifecycle, run orchestration and the msdb CLI.

The harness starts the embedded stack (PostgreSQL, Redis, the services),
drives scenarios (Locust load, samplers) and writes run directories.  It may
import `system_under_test` (to know its config shape) and `scenarios`; the
services never import the harness.
"""
