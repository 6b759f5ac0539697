"""Scenarios: what load to apply (Locust users and shapes), what data to seed,
what to record after the load, and which checks judge a run.  `registry`
lists them for `msdb run`.

The workload knows the services' HTTP APIs only and never the services' code;
what it needs reaches it through Locust's Environment (`WorkloadContext`).
"""
