"""No secret in outputs (seed §8): a scan of files for the stack's passwords
and keys that never needs the secrets themselves at judging time.

At the end of a run, `fingerprints()` tokenises every secret the stack holds
(each login's password, the Redis ACL passwords, the TLS private keys) into
runs of `[A-Za-z0-9_-]` of at least `MIN_TOKEN` characters and keeps a salted
SHA-256 of each.  The run directory holds only those (the passwords are 128
random bits, a token is at least 96), so `msdb check` re-runs the scan from
the run directory alone. `scan()` tokenises each file the same way and
reports every token whose salted hash is a secret's.

A password inside a DSN (`user:PASSWORD@host`), a URL, a log line, JSON or
HTML is one token on both sides, so it is found wherever it lands. PDFs are
scanned as the text pypdf extracts (their content streams are compressed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict

__all__ = ["MIN_TOKEN", "tokens", "fingerprints", "secrets_of_stack", "scan", "scan_text"]

MIN_TOKEN = 16
_TOKEN = re.compile(rb"[A-Za-z0-9_\-]{%d,}" % MIN_TOKEN)


def tokens(data: bytes) -> Iterable[bytes]:
    return (m.group(0) for m in _TOKEN.finditer(data))


def _h(salt: bytes, tok: bytes) -> str:
    return hashlib.sha256(salt + tok).hexdigest()


def fingerprints(secrets: Iterable[str], salt: bytes | None = None) -> dict:
    salt = salt or os.urandom(16)
    hashes = set()
    lengths = set()
    n = 0
    for s in secrets:
        if not s:
            continue
        n += 1
        for tok in tokens(s.encode()):
            hashes.add(_h(salt, tok))
            lengths.add(len(tok))
    return {"salt": salt.hex(), "min_token": MIN_TOKEN, "secrets": n,
            "lengths": sorted(lengths), "hashes": sorted(hashes)}


def _walk(obj) -> Iterable[str]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)
    elif isinstance(obj, str):
        yield obj


def secrets_of_stack(info, state_dir: str | Path | None = None) -> list[str]:
    """Every password and key the harness can see: in the stack's DSNs and
    Redis URL, the embedded stack's secrets.json, and its TLS private keys."""
    out: list[str] = []
    dsns = [db.dsn for db in info.databases.values()] + [i.admin_dsn for i in info.instances]
    if info.replica is not None:
        dsns.append(info.replica.dsn)
    for dsn in dsns:
        pw = conninfo_to_dict(dsn).get("password")
        if pw:
            out.append(pw)
    if info.redis is not None and urlsplit(info.redis.url).password:
        out.append(urlsplit(info.redis.url).password)
    if state_dir is not None:
        sd = Path(state_dir)
        try:
            out += list(_walk(json.loads((sd / "secrets.json").read_text())))
        except (OSError, ValueError):
            pass
        for key in sorted((sd / "tls").glob("*.key")) if (sd / "tls").is_dir() else ():
            try:
                out.append(key.read_text())
            except OSError:
                pass
    return out


def scan_text(data: bytes, fp: dict) -> int:
    """How many tokens of `data` are a secret's."""
    salt = bytes.fromhex(fp["salt"])
    lengths = set(fp["lengths"])
    hashes = set(fp["hashes"])
    return sum(1 for tok in tokens(data) if len(tok) in lengths and _h(salt, tok) in hashes)


def _pdf_text(path: Path) -> bytes:
    from pypdf import PdfReader   # imported here: only PDFs need it
    reader = PdfReader(str(path))
    return "\n".join(page.extract_text() or "" for page in reader.pages).encode()


def scan(paths: Iterable[Path], fp: dict, *, root: Path | None = None) -> dict:
    """{"files", "bytes", "matches": [{"file", "tokens"}], "unscanned": {file: why}}."""
    files = nbytes = 0
    matches: list[dict] = []
    unscanned: dict[str, str] = {}
    for p in paths:
        name = str(p.relative_to(root)) if root is not None else str(p)
        try:
            data = _pdf_text(p) if p.suffix == ".pdf" else p.read_bytes()
        except Exception as e:  # an unreadable file is not a clean one
            unscanned[name] = f"{type(e).__name__}: {str(e)[:200]}"
            continue
        files += 1
        nbytes += p.stat().st_size
        n = scan_text(data, fp)
        if n:
            matches.append({"file": name, "tokens": n})
    return {"files": files, "bytes": nbytes, "matches": matches, "unscanned": unscanned}
