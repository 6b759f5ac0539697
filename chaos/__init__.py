"""Fault injection: a Toxiproxy-compatible proxy, its client, fault schedules
and the nemesis that runs them.

    proxy.py     the TCP proxy (asyncio Protocols, uvloop): connections, links,
                 EOFs and half-closes as Toxiproxy treats them
    toxics.py    toxic definitions, validation and what they do to a link
                 (Toxiproxy 2.x semantics); address parsing
    fastpath.py  the eBPF sockmap fast path of a connection (on when the proxy
                 runs as root with MSDB_PROXY_SOCKMAP unset or 1)
    sockmap.py   the hand-assembled BPF program and its map
    server.py    the Toxiproxy 2.x HTTP API (aiohttp) and `msdb proxy`
    client.py    toxiproxy-python plus what it lacks (per-server binding,
                 timeouts, 5xx errors, toxic updates, upstream changes)
    faults.py    fault schedules as data (`FaultSpec`), `FaultRecord`, the journal
    nemesis.py   runs a schedule, journals it, heals in a finally

chaos knows nothing of scenarios or of the stack: process faults go through a
`ProcessActions` object that the harness supplies.  Its one import from msdb
is `harness.utc`, the leaf module that formats every UTC time.
"""
