"""The msdb CLI and its parts: the stack (`stack/`, reached through the
`StackBackend` seam), runs of scenarios (`run/`), verdicts judged from run
directories (`checks/`) and backup/restore drills (`drills/`).
docs/ARCHITECTURE.md maps them.  The services never import the harness.
"""
