"""Backup machinery without a server: retention pruning is exact, WAL gaps are
named, the projection is arithmetic on measured rates, bad drill input exits 2."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from fix_cli import msdb, msdb_many
from harness.drills.backup import (BackupInfo, BackupSet, Retention, seg_name, segno, select_retained,
                                   wal_chain)
from harness.drills.command import parse_target
from harness.drills.pgrestore import restore
from harness.drills.rpo_rto import project_rto, rpo, rto_parts
from harness.errors import InfraError, UsageError
from harness.stack.pg import PgInstance, PgRuntime

DAY = 86400.0


def _backupset(tmp_path: Path) -> BackupSet:
    rt = PgRuntime(tmp_path / "state", tmp_path / "data", tmp_path / "bin", None)
    inst = PgInstance(rt, "pg-x", 1, "pw")
    bs = BackupSet(inst, tmp_path / "backups", tmp_path / "geo", replicator_password="pw")
    bs.prepare()
    inst.archive_dir.mkdir(parents=True)
    return bs


def _fake_backup(bs: BackupSet, label: str, finished_at: float, start_seg: int) -> BackupInfo:
    """A base backup as take() leaves it: a directory and its description."""
    d = bs.base_dir / label
    d.mkdir()
    (d / "PG_VERSION").write_text("18\n")
    b = BackupInfo(label=label, path=str(d), started_at=finished_at - 1, finished_at=finished_at,
                   start_wal=seg_name(1, start_seg), start_lsn="0/0", bytes=3, seconds=1.0,
                   verified=True)
    (bs.base_dir / f"{label}.json").write_text(json.dumps(b.to_json()))
    return b


def test_segment_names_round_trip():
    for n in (0, 1, 255, 256, 257, 0x1234):
        assert segno(seg_name(3, n)) == (3, n)
    assert seg_name(1, 0x100) == "000000010000000100000000"


@pytest.mark.parametrize("policy,expect", [
    (Retention(keep_last=3), {"d9", "d8", "d7"}),
    (Retention(keep_days=7), {"d9", "d8", "d7", "d6", "d5", "d4", "d3"}),     # age 0..6 days (+0.5)
    (Retention(keep_last=2, keep_days=3.6), {"d9", "d8", "d7", "d6"}),
    (Retention(keep_days=0.1), {"d9"}),          # nothing young enough: the newest stays
    (Retention(keep_last=50), {f"d{i}" for i in range(10)}),
])
def test_retention_prunes_exactly_what_the_policy_says(tmp_path, policy, expect):
    bs = _backupset(tmp_path)
    now = 1_800_000_000.0
    # ten daily backups, d9 newest (half a day old), each starting at segment 10*i
    for i in range(10):
        _fake_backup(bs, f"d{i}", now - (9 - i) * DAY - 0.5 * DAY, start_seg=10 * i)
    for n in range(0, 100):   # the archive, its stream and geo copies, and a timeline history file
        (bs.archive_dir / seg_name(1, n)).write_bytes(b"x")
        (bs.geo / "wal" / seg_name(1, n)).write_bytes(b"x")
    (bs.archive_dir / "00000002.history").write_text("1\t0/0\tno recovery target specified\n")
    (bs.stream_dir / (seg_name(1, 95) + ".partial")).write_bytes(b"x")
    bs.geo_sync()
    assert {p.name for p in (bs.geo / "base").iterdir() if p.is_dir()} == {f"d{i}" for i in range(10)}

    out = bs.prune(policy, now=now)
    assert set(out["kept"]) == expect
    assert set(out["pruned"]) == {f"d{i}" for i in range(10)} - expect
    assert {b.label for b in bs.backups()} == expect
    for base in (bs.base_dir, bs.geo / "base"):
        assert {p.name for p in base.iterdir() if p.is_dir()} == expect
    oldest = min(10 * int(label[1:]) for label in expect)
    for d in (bs.archive_dir, bs.geo / "wal"):
        segs = sorted(segno(p.name)[1] for p in d.iterdir() if not p.name.endswith(".history"))
        assert segs == list(range(oldest, 100)), d
    assert (bs.archive_dir / "00000002.history").exists()
    assert (bs.stream_dir / (seg_name(1, 95) + ".partial")).exists()
    assert out["wal_removed"] == 2 * oldest


def test_retention_is_pure_and_rejects_nonsense():
    b = [BackupInfo(f"b{i}", "/x", i * DAY, i * DAY, seg_name(1, i), "0/0", 1, 1.0, True) for i in range(5)]
    kept, pruned = select_retained(b, Retention(keep_last=2), now=5 * DAY)
    assert [x.label for x in kept] == ["b4", "b3"] and [x.label for x in pruned] == ["b2", "b1", "b0"]
    for bad in (dict(), dict(keep_last=0), dict(keep_last=1.5), dict(keep_days=-1), dict(keep_days=0)):
        with pytest.raises(UsageError):
            Retention(**bad)


def test_wal_chain_names_the_gap(tmp_path):
    a, s = tmp_path / "archive", tmp_path / "stream"
    a.mkdir(), s.mkdir()
    for n in (3, 4, 5, 7, 8):
        (a / seg_name(1, n)).write_bytes(b"x")
    ch = wal_chain(seg_name(1, 3), [a, s])
    assert ch["segments"] == [seg_name(1, n) for n in (3, 4, 5)]
    assert ch["gap"] == seg_name(1, 6) and ch["beyond_gap"] == [seg_name(1, 7), seg_name(1, 8)]
    (s / (seg_name(1, 6) + ".partial")).write_bytes(b"x")    # a partial segment ends the chain
    ch = wal_chain(seg_name(1, 3), [a, s])
    assert ch["last"] == seg_name(1, 6) and ch["last_partial"] and ch["beyond_gap"]
    (a / seg_name(1, 6)).write_bytes(b"x")                    # a complete one beats it
    ch = wal_chain(seg_name(1, 3), [a, s])
    assert ch["gap"] is None and ch["last"] == seg_name(1, 8) and not ch["last_partial"]
    assert wal_chain(seg_name(1, 2), [a])["gap"] == seg_name(1, 2)


def test_wal_chain_ranks_the_backups_own_pg_wal_last(tmp_path):
    """The base backup's pg_wal holds the segment it ended in as a full-size
    file without `.partial` (CI caught the chain calling that the end of the
    WAL while the receiver's .partial of the same segment went further)."""
    s, pg_wal = tmp_path / "stream", tmp_path / "backup" / "pg_wal"
    s.mkdir(), pg_wal.mkdir(parents=True)
    (pg_wal / seg_name(1, 4)).write_bytes(b"x")
    (pg_wal / seg_name(1, 5)).write_bytes(b"x")
    (s / seg_name(1, 4)).write_bytes(b"x")
    (s / (seg_name(1, 5) + ".partial")).write_bytes(b"x")
    ch = wal_chain(seg_name(1, 4), [tmp_path / "archive", s], fallback=pg_wal)
    assert ch["last"] == seg_name(1, 5) and ch["last_partial"] is True, ch
    # with nothing else, the backup's own WAL is what recovery reads
    ch = wal_chain(seg_name(1, 4), [tmp_path / "archive"], fallback=pg_wal)
    assert ch["segments"] == [seg_name(1, 4), seg_name(1, 5)] and not ch["last_partial"]


def test_restore_refuses_without_backup_or_with_a_gap(tmp_path):
    bs = _backupset(tmp_path)
    dest = PgInstance(bs.rt, "pg-x-restored", 2, "pw")
    with pytest.raises(InfraError, match="no verified base backup"):
        restore(bs, dest)
    _fake_backup(bs, "b1", time.time() - 100, start_seg=3)
    with pytest.raises(InfraError, match=f"WAL segment {seg_name(1, 3)} .*missing"):
        restore(bs, dest)
    for n in (3, 4, 6):
        (bs.archive_dir / seg_name(1, n)).write_bytes(b"x")
    with pytest.raises(InfraError, match=f"archive gap: WAL segment {seg_name(1, 5)} is missing"):
        restore(bs, dest)
    (bs.archive_dir / seg_name(1, 6)).unlink()
    with pytest.raises(UsageError, match="--target-time .* is before the earliest recoverable point"):
        restore(bs, dest, target_time=time.time() - 1000)
    with pytest.raises(UsageError, match="--target-time .* is after the last recoverable point"):
        restore(bs, dest, target_time=time.time() + 1000)
    assert not dest.datadir.exists()    # nothing was touched


def test_projection_is_arithmetic_on_measured_rates():
    pr = project_rto(copy_mb_s=100.0, replay_mb_s=10.0, wal_per_data_byte=2.0, growth_gb_per_year=50.0,
                     fixed_s=5.0, target_s=7200.0)
    y1 = pr["years"][0]
    assert y1["copy_s"] == pytest.approx(50 * 1024 / 100, abs=0.1)
    assert y1["wal_replay_s"] == pytest.approx(50 * 1024 / 365 * 2 / 10, abs=0.1)
    assert y1["rto_s"] == pytest.approx(y1["copy_s"] + y1["wal_replay_s"] + 5.0, abs=0.2)
    assert pr["breaks_in_year"] is None and pr["breaks_in_year_extrapolated"] == 14   # 512 s/year: 14 x 512 + 33 > 7200
    slow = project_rto(copy_mb_s=10.0, replay_mb_s=10.0, wal_per_data_byte=2.0, growth_gb_per_year=50.0,
                       fixed_s=5.0, target_s=7200.0)
    assert slow["breaks_in_year"] == 2 and [r["meets_target"] for r in slow["years"]] == [True] + [False] * 4
    none = project_rto(copy_mb_s=100.0, replay_mb_s=None, wal_per_data_byte=2.0, growth_gb_per_year=50.0,
                       fixed_s=5.0, target_s=7200.0)
    assert none["years"] == [] and "WAL replay" in none["note"]


def test_target_time_forms():
    assert parse_target("-10s") == ("rel", 10.0)
    assert parse_target("2026-11-27T17:00:00Z") == ("abs", 1795798800.0)
    assert parse_target("2026-11-27T17:00:00") == ("abs", 1795798800.0)
    with pytest.raises(UsageError, match="'yesterday'"):
        parse_target("yesterday")


BAD_DRILL = [
    (["restore", "--wal", "tape"], "--wal 'tape'"),
    (["restore", "--db", "catalog"], "--db 'catalog'"),
    (["restore", "--archive-timeout", "soon"], "--archive-timeout 'soon'"),
    (["restore", "--archive-timeout", "1.5s"], "--archive-timeout '1.5s'"),
    (["restore", "--disaster-after", "0s"], "--disaster-after '0s'"),
    (["restore", "--target-time", "noon"], "--target-time 'noon'"),
    (["restore", "--target-time=-90s", "--disaster-after", "60s"], "--target-time '-90s'"),
    (["restore", "--target-time", "2020-01-01T00:00:00Z"], "--target-time '2020-01-01T00:00:00Z' is in the past"),
    (["restore", "--writers", "0"], "--writers 0"),
    (["restore", "--keep-last", "0"], "keep_last 0"),
    (["restore", "--wal", "all", "--keep-stack"], "--keep-stack"),
    (["restore", "--slo", "/nonexistent.yaml"], "/nonexistent.yaml"),
    (["masked", "--db", "orders"], "--db 'orders'"),
    (["pitr", "--target-time=-5s"], "--target-time '-5s'"),
]


@pytest.fixture(scope="module")
def bad_drill_results(tmp_path_factory):
    """Every BAD_DRILL command, a few at a time, each with a state dir of its own."""
    dirs = [tmp_path_factory.mktemp("drill") for _ in BAD_DRILL]
    return list(zip(msdb_many([(("drill", *argv, "--state-dir", d / "st", "--base-port", "21400",
                                 "--out", d / "out"), {"timeout": 60})
                               for (argv, _), d in zip(BAD_DRILL, dirs)]), dirs))


@pytest.mark.parametrize("i", range(len(BAD_DRILL)), ids=[" ".join(a) for a, _ in BAD_DRILL])
def test_bad_drill_input_exits_2_naming_the_value(i, bad_drill_results):
    (r, d), needle = bad_drill_results[i], BAD_DRILL[i][1]
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not (d / "st").exists()   # refused before any stack was started


def test_drill_refuses_a_state_dir_that_is_not_its_own(tmp_path):
    st = tmp_path / "st"
    st.mkdir()
    (st / "stack.json").write_text("{}")
    r = msdb("drill", "restore", "--state-dir", str(st),
             "--base-port", "21400", "--out", str(tmp_path / "out"), timeout=60)
    assert r.returncode == 2 and "started by `msdb up`" in r.stderr, r.stderr
    assert (st / "stack.json").read_text() == "{}"
    (st / "stack.json").unlink()
    (st / "notes.txt").write_text("mine")      # e.g. --state-dir . in a project
    r = msdb("drill", "pitr", "--state-dir", str(st),
             "--base-port", "21400", "--out", str(tmp_path / "out2"), timeout=60)
    assert r.returncode == 2 and "files msdb did not make" in r.stderr, r.stderr
    assert (st / "notes.txt").read_text() == "mine"


def test_drill_help_and_taken_port(tmp_path):
    r = msdb("drill", "--help", timeout=60)
    assert r.returncode == 0 and "restore" in r.stdout and "--wal" in r.stdout and "--target-time" in r.stdout
    with socket.socket() as s:
        s.bind(("127.0.0.1", 21430))     # base + 30: the drill stack's proxy API port
        s.listen()
        r = msdb("drill", "restore", "--state-dir",
             str(tmp_path / "st"), "--base-port", "21400", "--out", str(tmp_path / "out"), timeout=120)
    assert r.returncode == 3 and "port 21430" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "st").exists()     # the failed drill stack was purged


def test_geo_copy_is_read_like_the_primary_once_the_region_is_lost(tmp_path):
    bs = _backupset(tmp_path)
    _fake_backup(bs, "b1", 1_800_000_000.0, start_seg=3)
    for n in range(3, 7):
        (bs.archive_dir / seg_name(1, n)).write_bytes(b"x")
    out = bs.geo_sync()
    assert (out["base_copied"], out["wal_copied"], out["encrypted"]) == (1, 4, False)
    (bs.archive_dir / seg_name(1, 7)).write_bytes(b"x")     # archived after the last geo sync
    lost = bs.lose_region()
    assert lost == {"base_backups": 1, "archived_wal": 5}
    assert not bs.base_dir.exists() and not bs.archive_dir.exists()
    with pytest.raises(InfraError, match="no verified base backup"):
        bs.latest()
    geo = bs.geo_copy()
    # The json still names the lost region's path; the copy beside it is used.
    b = geo.latest()
    assert b.label == "b1" and Path(b.path) == bs.geo / "base" / "b1" and Path(b.path).is_dir()
    chain = wal_chain(b.start_wal, [geo.archive_dir, geo.stream_dir])
    assert chain["segments"] == [seg_name(1, n) for n in range(3, 7)]   # 7 never reached geo
    with pytest.raises(InfraError):
        geo.take()
    with pytest.raises(InfraError):
        geo.geo_sync()


def test_from_geo_is_refused_outside_the_restore_drill(tmp_path):
    r = msdb("drill", "pitr", "--from", "geo",
             "--state-dir", str(tmp_path / "st"), timeout=60)
    assert r.returncode == 2 and "--from geo" in r.stderr and "restore" in r.stderr
    r = msdb("drill", "restore", "--from", "mars",
             "--state-dir", str(tmp_path / "st"), timeout=60)
    assert r.returncode == 2 and "mars" in r.stderr
    r = msdb("up", "--from", "geo",
             "--state-dir", str(tmp_path / "st"), timeout=60)
    assert r.returncode == 2 and "--from" in r.stderr      # a drill option, not one of `up`


def test_rpo_counts_lost_acks_and_the_time_since_the_last_recovered_one():
    acked = [{"id": f"w{i}", "ack_ts": 100.0 + i} for i in range(10)]
    r = rpo(acked=acked, present={f"w{i}" for i in range(6)}, disaster=112.0, backup_end=90.0)
    assert [a["id"] for a in r["lost"]] == ["w6", "w7", "w8", "w9"]
    assert r["last_recovered_ack"] == 105.0 and r["rpo_s"] == 7.0
    # nothing acknowledged was recovered: the RPO reaches back to the base backup's end
    assert rpo(acked=acked, present=set(), disaster=112.0, backup_end=90.0)["rpo_s"] == 22.0
    # nothing lost: RPO 0, whatever the clock says
    assert rpo(acked=acked, present={a["id"] for a in acked}, disaster=112.0, backup_end=90.0)["rpo_s"] == 0.0


def test_rto_parts_are_contiguous_and_add_up():
    parts = rto_parts(disaster=0.0, destroyed=0.5, copy_end=2.0, redo_done=5.0, read_write=5.25,
                      first_write=6.0)
    assert parts == {"rto_destroy_s": 0.5, "rto_copy_s": 1.5, "rto_wal_replay_s": 3.0,
                     "rto_promotion_s": 0.25, "rto_reconnect_s": 0.75}
    assert sum(parts.values()) == 6.0
    # no "redo done" in the log: replay runs until read-write, promotion unknown
    p2 = rto_parts(disaster=0.0, destroyed=0.5, copy_end=2.0, redo_done=None, read_write=5.25,
                   first_write=6.0)
    assert p2["rto_wal_replay_s"] == 3.25 and p2["rto_promotion_s"] is None
