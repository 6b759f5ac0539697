"""A run directory's writers.  What each file holds, and the one reader of
them, is reports/rundata.py (the PRODUCT.md contract).

Writers are safe to call from Locust greenlets and sampler threads.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..utc import stamp, utc_now

__all__ = ["RunDir", "HistoryWriter", "CsvTable"]


class CsvTable:
    def __init__(self, path: Path, columns: list[str]):
        self.path = path
        self.columns = columns
        self._f = open(path, "w", newline="")
        self._w = csv.writer(self._f)
        self._w.writerow(columns)
        self._lock = threading.Lock()
        self.rows = 0

    def row(self, *values: Any) -> None:
        with self._lock:
            self._w.writerow(values)
            self.rows += 1

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()

    def __enter__(self) -> "CsvTable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class HistoryWriter:
    """Jepsen-style history: every operation is an `invoke` then `ok`, `fail`
    (it definitely did not happen) or `info` (outcome unknown)."""

    def __init__(self, path: Path):
        self._f = open(path, "w")
        self._lock = threading.Lock()
        self._t0 = time.monotonic_ns()
        self.index = 0
        self._open: dict[str, tuple[str, Any]] = {}   # process -> (f, value) of its pending invoke

    def _write(self, type_: str, process: str, f: str, value: Any) -> None:
        with self._lock:
            if type_ == "invoke":
                self._open[process] = (f, value)
            else:
                self._open.pop(process, None)
            rec = {"index": self.index, "type": type_, "process": process, "f": f, "value": value,
                   "time": time.monotonic_ns() - self._t0, "wall": utc_now()}
            self.index += 1
            self._f.write(json.dumps(rec, default=str) + "\n")

    def invoke(self, process, f, value=None):
        self._write("invoke", process, f, value)

    def ok(self, process, f, value=None):
        self._write("ok", process, f, value)

    def fail(self, process, f, value=None):
        self._write("fail", process, f, value)

    def info(self, process, f, value=None):
        self._write("info", process, f, value)

    def close(self) -> None:
        """Close the history; an operation still in flight ends as `info`
        (its outcome is unknown: the run stopped while it was pending)."""
        for process, (f, value) in list(self._open.items()):
            v = dict(value) if isinstance(value, dict) else {"value": value}
            self.info(process, f, {**v, "error": "run ended before the operation completed"})
        with self._lock:
            if not self._f.closed:
                self._f.close()


class RunDir:
    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def check_out(cls, out: str | None, root: Path = Path("runs")) -> None:
        """UsageError (exit 2) now, before a stack starts, if the run directory
        could not be made there: not empty, or under a file."""
        path = Path(out) if out else root
        if out and path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UsageError(f"--out {out!r} exists and is not an empty directory")
        for parent in (path, *path.parents):
            if parent.exists():
                if not parent.is_dir():
                    raise UsageError(f"--out {str(out or root)!r}: {str(parent)!r} is a file, not a "
                                     f"directory")
                break

    @classmethod
    def create(cls, out: str | None, scenario: str, root: Path = Path("runs")) -> "RunDir":
        cls.check_out(out, root)
        if out:
            path = Path(out)
        else:
            now = stamp()
            path = root / f"{now}-{scenario}"
            n = 1
            while path.exists():
                n += 1
                path = root / f"{now}-{scenario}-{n}"
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    def write_json(self, name: str, data: Any) -> Path:
        p = self.path / name
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, p)
        return p

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def table(self, name: str, columns: list[str]) -> CsvTable:
        return CsvTable(self.path / name, columns)

    def history(self) -> HistoryWriter:
        return HistoryWriter(self.path / "history.jsonl")
