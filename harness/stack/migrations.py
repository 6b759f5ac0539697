"""Versioned SQL migrations per service, applied with yoyo-migrations.

Each service keeps its migrations beside its code, in the seed's style:
`system_under_test/<service>/migrations/001_create_users_table.sql`.  They
run as the service's own role, so its tables belong to it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from urllib.parse import quote

from yoyo import get_backend, read_migrations

from ..errors import InfraError

__all__ = ["migrations_dir", "apply", "applied"]


def migrations_dir(service: str) -> Path:
    """The service's migrations folder; an InfraError if there is none (a
    service without its schema must never start as if migrated)."""
    d = Path(str(files("system_under_test") / service / "migrations"))
    if not d.is_dir() or not any(d.glob("*.sql")):
        raise InfraError(f"no SQL migrations for {service} in {d}")
    return d


def _backend(*, host: str, port: int, dbname: str, user: str, password: str,
             sslmode: str = "disable", sslrootcert: str | None = None):
    # sslmode/sslrootcert: a --tls stack's verify-full against its own CA.
    url = (f"postgresql+psycopg://{quote(user, safe='')}:{quote(password, safe='')}"
           f"@{host}:{port}/{quote(dbname, safe='')}?sslmode={sslmode}"
           + (f"&sslrootcert={quote(sslrootcert, safe='')}" if sslrootcert else ""))
    return get_backend(url)


def apply(service: str, **conn) -> list[str]:
    """Apply pending migrations; returns the ids applied now."""
    migrations = read_migrations(str(migrations_dir(service)))
    try:
        backend = _backend(**conn)
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        return [m.id for m in pending]
    except Exception as e:  # yoyo raises driver and its own errors alike
        raise InfraError(f"migrations of {service} into {conn.get('dbname')} failed: {e}") from e


def applied(service: str, **conn) -> list[str]:
    backend = _backend(**conn)
    migrations = read_migrations(str(migrations_dir(service)))
    return [m.id for m in migrations if m.id in {a.id for a in backend.to_rollback(migrations)}]
