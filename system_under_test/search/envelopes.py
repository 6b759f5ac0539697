"""The catalog's change events as the search index reads them, whatever the
catalog's engine.

The index applies row changes of the PostgreSQL `products` table
(`after = {"id", "version", "doc": {...}}`, `source.lsn`).  With the catalog on
MongoDB the events are the Debezium MongoDB connector's (msdb's relay,
`cdc/mongo.py`, or Debezium itself in compose): `after` is the full document
as Extended JSON text, `source.collection` names the collection, and a
delete carries the document key in `filter` (Debezium 1.x; msdb's relay
keeps it).  `normalize` maps those to the row shape and leaves every other
event as it is.

The position: `source.lsn` when the relay set it, else Debezium's clusterTime
(`ts_ms` whole seconds) << 32 | `ord`, the same number msdb's relay computes.
"""

from __future__ import annotations

import json

__all__ = ["normalize", "is_mongodb"]

_META = ("_id", "version", "created_at", "updated_at")


def is_mongodb(event: dict) -> bool:
    src = event.get("source")
    return isinstance(src, dict) and src.get("connector") == "mongodb"


def _plain(v):
    """Extended JSON's wrappers the index cares about, as plain values."""
    if isinstance(v, dict) and len(v) == 1:
        for k in ("$numberDecimal", "$numberLong", "$numberInt", "$numberDouble", "$oid", "$date"):
            if k in v:
                return v[k]
    return v


def _load(text) -> dict | None:
    if isinstance(text, dict):
        return text
    if not isinstance(text, str):
        return None
    try:
        # Relaxed Extended JSON is JSON: its wrappers stay dicts ({"$date": ...}),
        # and _plain takes out the ones the index reads.  (No bson here: the
        # default install has no pymongo.)
        v = json.loads(text)
    except ValueError:
        return None
    return v if isinstance(v, dict) else None


def normalize(event: dict) -> dict | None:
    """The event in the row shape the index applies; None for a MongoDB event
    it cannot use (no document key, no position)."""
    if not is_mongodb(event):
        return event
    src = dict(event["source"])
    lsn = src.get("lsn")
    if not isinstance(lsn, int):
        ts, ord_ = src.get("ts_ms"), src.get("ord")
        if not isinstance(ts, (int, float)) or not isinstance(ord_, int):
            return None
        lsn = (int(ts) // 1000 << 32) | ord_
    src.update(table=src.get("collection") or src.get("table"), lsn=lsn)
    op = event.get("op")
    doc = _load(event.get("after"))
    key = _load(event.get("filter")) or {}
    pid = _plain((doc or {}).get("_id", key.get("_id")))
    if pid is None:
        return None
    pid = str(pid)
    if op == "d":
        return {**event, "op": "d", "before": {"id": pid}, "after": None, "source": src}
    if doc is None:
        return None   # the document was gone by the time it was looked up: a delete follows
    row = {"id": pid, "version": int(_plain(doc.get("version", 0)) or 0),
           "doc": {k: _plain(v) for k, v in doc.items() if k not in _META}}
    return {**event, "op": op, "before": None, "after": row, "source": src}
