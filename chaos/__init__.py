"""Fault injection: a Toxiproxy-compatible proxy, its client, fault schedules
and the nemesis that runs them.

    proxy.py    the TCP proxy (asyncio Protocols, uvloop) and its toxics' behaviour
    toxics.py   toxic definitions and validation (Toxiproxy 2.x semantics)
    server.py   the Toxiproxy 2.x HTTP API (aiohttp) and `msdb proxy`
    client.py   toxiproxy-python plus what it lacks (per-server binding,
                timeouts, 5xx errors, toxic updates)
    faults.py   fault schedules as data (`FaultSpec`), `FaultRecord`, the journal
    nemesis.py  runs a schedule, journals it, heals in a finally

chaos knows nothing of scenarios or of the stack: process faults go through a
`ProcessActions` object that the harness supplies.
"""
