"""Scenarios: what load to apply (Locust users and shapes), what data to seed,
and which thresholds judge a run.  `registry` lists them for `msdb run`.

Scenarios know the services' HTTP APIs only; they never import the harness
(the harness hands them a history recorder) nor the services' code.
"""
