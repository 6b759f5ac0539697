"""A run directory, read (the PRODUCT.md contract): one reader for the
checks and the reports.

    run.json            scenario, parameters, SLO, topology, stack, versions, UTC start/end,
                        how the load went (`load`), child processes' exits, end states
    requests.csv        one row per client request (exact percentiles)
    probe.csv           noisy-neighbour: its latency probe's requests, from a process of its own
    history.jsonl       client operations: invoke | ok | fail | info
    faults.schedule.json  the fault schedule the run was given
    faults.jsonl        fault records with UTC start/end (the last line per fault wins)
    metrics.csv         services' /metrics, tidy: time, service, metric, labels, value
    health.csv          every part's health, 1 Hz, until the stack was whole after the load
    postgres.csv, redis.csv, statements.csv   the stores, sampled
    heartbeats.csv, replication.csv, cdc_lag.csv, cdc_backlog.csv   the lag monitor
    steps.json, phases.json   load steps (capacity) or phases (noisy neighbour)
    final_state.json    the saga's final state after quiescence
    cdc_end_state.json  CDC source vs targets after the consumers drained
    results.json        checks and verdict (harness.checks.judge)

Nothing here talks to a stack: a run directory copied to another machine
reads the same.
"""

from __future__ import annotations

import csv
import json
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from harness.errors import UsageError
from harness.utc import epoch

__all__ = ["Run", "Request", "NotARunDir", "REQUEST_COLUMNS", "PROBE_FILE", "METRICS_COLUMNS", "HEALTH_COLUMNS",
           "PG_COLUMNS", "REDIS_COLUMNS", "STATEMENT_COLUMNS"]

REQUEST_COLUMNS = ["time", "name", "method", "status", "response_ms", "bytes", "ok", "error"]
PROBE_FILE = "probe.csv"     # a latency probe's requests, from a process of its own (REQUEST_COLUMNS)
METRICS_COLUMNS = ["time", "service", "metric", "labels", "value"]
HEALTH_COLUMNS = ["time", "part", "kind", "healthy", "detail"]
PG_COLUMNS = ["time", "instance", "metric", "labels", "value"]
REDIS_COLUMNS = ["time", "metric", "value"]
STATEMENT_COLUMNS = ["instance", "database", "queryid", "query", "calls", "total_exec_ms",
                     "mean_exec_ms", "rows"]


class NotARunDir(UsageError):
    """The path is not a run directory, or one of its files cannot be read
    (exit 2); the message names the directory and the file."""


class Request(NamedTuple):
    """One client request; `time` is when it started (Unix seconds)."""
    time: float
    name: str
    method: str
    status: int            # 0: no response at all
    response_ms: float
    bytes: int
    ok: bool
    error: str

    @property
    def server_error(self) -> bool:
        return self.status == 0 or self.status >= 500


class Run:
    """The files of one run directory, parsed on first use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise NotARunDir(f"{str(path)!r} does not exist")
        if not self.path.is_dir():
            raise NotARunDir(f"{str(path)!r} is not a directory")
        if not (self.path / "run.json").is_file():
            raise NotARunDir(f"{str(path)!r} is not a run directory (no run.json)")
        if not isinstance(self.info, dict):
            raise NotARunDir(f"{str(path)!r}: run.json is not a JSON object")
        self.children: dict[str, dict] = {}    # a matrix run's children, as just judged
        self._rows: dict[str, list[dict]] = {}

    # -- generic ---------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    def json(self, name: str, default: Any = None) -> Any:
        try:
            return json.loads((self.path / name).read_text())
        except FileNotFoundError:
            return default
        except (ValueError, OSError) as e:     # not JSON, not UTF-8, unreadable
            raise NotARunDir(f"{str(self.path)!r}: {name} cannot be read ({type(e).__name__}: "
                             f"{str(e)[:120]}); rerun, or remove the damaged file") from None

    def rows(self, name: str) -> list[dict]:
        """A CSV file as dicts of strings, read once; [] if the run did not write it."""
        if name not in self._rows:
            try:
                with open(self.path / name, newline="") as f:
                    self._rows[name] = list(csv.DictReader(f))
            except FileNotFoundError:
                self._rows[name] = []
            except (ValueError, OSError, csv.Error) as e:
                raise NotARunDir(f"{str(self.path)!r}: {name} cannot be read ({type(e).__name__}: "
                                 f"{str(e)[:120]})") from None
        return self._rows[name]

    def jsonl(self, name: str) -> list[dict]:
        """One JSON value per line; a last line cut short (a writer killed
        mid-line) is left out, any other bad line is an error naming it."""
        try:
            text = (self.path / name).read_text()
        except FileNotFoundError:
            return []
        except (ValueError, OSError) as e:
            raise NotARunDir(f"{str(self.path)!r}: {name} cannot be read ({type(e).__name__})") from None
        lines = text.splitlines()
        out = []
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                if i == len(lines) and not text.endswith("\n"):
                    break
                raise NotARunDir(f"{str(self.path)!r}: {name} line {i} is not JSON") from None
        return out

    # -- the contract's files ----------------------------------------------------------

    @cached_property
    def info(self) -> dict:
        """run.json."""
        return self.json("run.json")

    @property
    def scenario(self) -> str:
        return self.info.get("scenario", "")

    @property
    def results(self) -> dict | None:
        return self.json("results.json")

    @property
    def load_end(self) -> float | None:
        """When the load stopped (Unix seconds), from run.json's `load`."""
        return epoch((self.info.get("load") or {}).get("end"))

    @cached_property
    def requests(self) -> list[Request]:
        return self._requests("requests.csv")

    @cached_property
    def probe(self) -> list[Request]:
        """probe.csv: a latency probe's requests from a process of its own
        (noisy-neighbour); empty in runs without one."""
        return self._requests(PROBE_FILE)

    def _requests(self, name: str) -> list[Request]:
        return [Request(float(r["time"]), r["name"], r["method"], int(r["status"]),
                        float(r["response_ms"]), int(r["bytes"] or 0), r["ok"] in ("1", "True"),
                        r["error"]) for r in self.rows(name)]

    @cached_property
    def faults(self) -> list[dict]:
        """faults.jsonl: the final record of each fault, in the order first seen."""
        last: dict[str, dict] = {}
        for r in self.jsonl("faults.jsonl"):
            last[r["name"]] = r
        return list(last.values())

    @cached_property
    def schedule(self) -> list[dict]:
        return self.json("faults.schedule.json", []) or []

    @cached_property
    def history(self) -> list[dict]:
        return self.jsonl("history.jsonl")

    @cached_property
    def health(self) -> list[tuple[float, str, str, bool, str]]:
        """(time, part, kind, healthy, detail) per part and sample."""
        return [(float(r["time"]), r["part"], r["kind"], r["healthy"] == "1", r["detail"])
                for r in self.rows("health.csv")]

    @cached_property
    def health_samples(self) -> list[tuple[float, bool, list[str]]]:
        """Per sample time: whether every part was healthy, and which were not."""
        by: dict[float, list[str]] = {}
        for t, part, _kind, ok, _detail in self.health:
            bad = by.setdefault(t, [])
            if not ok:
                bad.append(part)
        return [(t, not bad, bad) for t, bad in sorted(by.items())]

    @cached_property
    def metric_rows(self) -> list[dict]:
        return self.rows("metrics.csv")

    def df(self, name: str, **kw):
        """A CSV file as a pandas DataFrame (empty if the run did not write it)."""
        import pandas as pd   # only the report and analysis need pandas
        try:
            return pd.read_csv(self.path / name, **kw)
        except (FileNotFoundError, pd.errors.EmptyDataError):
            return pd.DataFrame()
