"""The geo copy's encryption without a server: the chunked AES-256-GCM format
round-trips and refuses a wrong key, a changed byte, a cut, reordered or moved
chunk and a plaintext file; keys are parsed strictly; the leak scan sees
across block boundaries; the encrypted geo sync restores what it copied; the
checks geo-copy-encrypted and geo-leak-scan judge a synthetic run directory;
bad key input exits 2 before any stack starts."""

from __future__ import annotations

import base64
import json
import os
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest

from fix_cli import msdb
from harness.checks.judge import judge
from harness.drills import geocrypt as gc
from harness.drills.backup import BackupInfo, BackupSet, seg_name
from harness.drills.command import geo_keys
from harness.errors import UsageError
from harness.stack.pg import PgInstance, PgRuntime

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
HDR = 21            # magic 8 + version 1 + chunk size 4 + nonce prefix 8


def _enc(tmp_path: Path, data: bytes, rel: str = "wal/000000010000000000000003", chunk: int = 64,
         key: bytes = KEY) -> Path:
    src, dst = tmp_path / "plain", tmp_path / "sealed"
    src.write_bytes(data)
    gc.encrypt_file(key, src, dst, rel, chunk=chunk)
    return dst


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 64 * 5, 64 * 5 + 17])
def test_round_trip_of_multi_chunk_files(tmp_path, size):
    data = os.urandom(size)
    sealed = _enc(tmp_path, data)
    chunks = max(1, -(-size // 64))
    assert sealed.stat().st_size == HDR + size + 16 * chunks
    assert sealed.read_bytes()[:8] == gc.MAGIC
    out = tmp_path / "out"
    assert gc.decrypt_file(KEY, sealed, out, "wal/000000010000000000000003") == size
    assert out.read_bytes() == data
    assert gc.decrypt_file(KEY, sealed, None, "wal/000000010000000000000003") == size  # verify only


def test_a_big_file_is_streamed_not_read_whole(tmp_path):
    src = tmp_path / "seg"
    with open(src, "wb") as f:                 # a 16 MB WAL segment
        for _ in range(16):
            f.write(os.urandom(1 << 20))
    tracemalloc.start()
    try:
        gc.encrypt_file(KEY, src, tmp_path / "sealed", "wal/x")
        gc.decrypt_file(KEY, tmp_path / "sealed", tmp_path / "back", "wal/x")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 * (1 << 20), peak          # a few 1 MiB chunks, never 16 MB
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


def test_a_wrong_key_fails_naming_the_file_and_writes_nothing(tmp_path):
    sealed = _enc(tmp_path, os.urandom(300))
    out = tmp_path / "out"
    with pytest.raises(gc.AuthFailed, match=r"wal/000000010000000000000003: chunk 0 failed authentication") as e:
        gc.decrypt_file(OTHER, sealed, out, "wal/000000010000000000000003")
    assert e.value.relpath == "wal/000000010000000000000003" and e.value.exit_code == 3
    assert not out.exists() and not list(tmp_path.glob("out*"))


def test_a_changed_byte_is_caught_and_no_partial_plaintext_is_left(tmp_path):
    data = os.urandom(64 * 4)
    sealed = _enc(tmp_path, data)
    raw = bytearray(sealed.read_bytes())
    raw[HDR + 2 * 80 + 5] ^= 0x01            # a byte of chunk 2's ciphertext
    sealed.write_bytes(bytes(raw))
    with pytest.raises(gc.AuthFailed, match="chunk 2 failed"):
        gc.decrypt_file(KEY, sealed, tmp_path / "out", "wal/000000010000000000000003")
    assert not list(tmp_path.glob("out*"))


@pytest.mark.parametrize("keep", ["header only", "at a chunk boundary", "inside a chunk"])
def test_a_file_cut_short_is_caught(tmp_path, keep):
    sealed = _enc(tmp_path, os.urandom(64 * 4))
    raw = sealed.read_bytes()
    n = {"header only": HDR, "at a chunk boundary": HDR + 2 * 80, "inside a chunk": HDR + 2 * 80 + 30}[keep]
    sealed.write_bytes(raw[:n])
    with pytest.raises(gc.AuthFailed):
        gc.decrypt_file(KEY, sealed, None, "wal/000000010000000000000003")


def test_an_extended_file_is_caught(tmp_path):
    sealed = _enc(tmp_path, os.urandom(64 * 2))
    raw = sealed.read_bytes()
    sealed.write_bytes(raw + raw[HDR:HDR + 80])      # a chunk appended after the final one
    with pytest.raises(gc.AuthFailed, match="chunk 1 failed"):
        gc.decrypt_file(KEY, sealed, None, "wal/000000010000000000000003")


def test_reordered_swapped_or_moved_chunks_and_files_are_caught(tmp_path):
    rel = "base/b1/base/5/16384"
    sealed = _enc(tmp_path, os.urandom(64 * 3), rel=rel)
    raw = sealed.read_bytes()
    c = [raw[HDR + i * 80:HDR + (i + 1) * 80] for i in range(3)]
    sealed.write_bytes(raw[:HDR] + c[1] + c[0] + c[2])          # two chunks swapped
    with pytest.raises(gc.AuthFailed, match="chunk 0"):
        gc.decrypt_file(KEY, sealed, None, rel)
    sealed.write_bytes(raw)
    with pytest.raises(gc.AuthFailed, match="base/b1/base/5/16385: chunk 0"):   # moved to another path
        gc.decrypt_file(KEY, sealed, None, "base/b1/base/5/16385")
    # a chunk of another file (another nonce prefix) spliced in at the same index
    (tmp_path / "o").mkdir()
    o = _enc(tmp_path / "o", os.urandom(64 * 3), rel=rel).read_bytes()
    sealed.write_bytes(raw[:HDR] + c[0] + o[HDR + 80:HDR + 160] + c[2])
    with pytest.raises(gc.AuthFailed, match="chunk 1"):
        gc.decrypt_file(KEY, sealed, None, rel)
    # the header changed (another chunk size): it is authenticated too
    sealed.write_bytes(raw[:9] + (128).to_bytes(4, "big") + raw[13:])
    with pytest.raises(gc.AuthFailed):
        gc.decrypt_file(KEY, sealed, None, rel)


def test_a_plaintext_or_foreign_file_is_named_as_such(tmp_path):
    for content in (b"", b"short", b"PG_VERSION 18\n" * 100, b"MSDBGEO\x00"):
        p = tmp_path / "f"
        p.write_bytes(content)
        with pytest.raises(gc.NotEncrypted, match="wal/f: not an encrypted msdb geo file"):
            gc.decrypt_file(KEY, p, tmp_path / "out", "wal/f")
    sealed = _enc(tmp_path, b"x" * 10)
    raw = bytearray(sealed.read_bytes())
    raw[8] = 9                                # a format version this msdb does not know
    sealed.write_bytes(bytes(raw))
    with pytest.raises(gc.GeoCryptError, match="version 9 is unknown"):
        gc.decrypt_file(KEY, sealed, None, "wal/000000010000000000000003")


# -- keys ---------------------------------------------------------------------------

def test_key_parsing_accepts_base64_of_32_bytes_only():
    b64 = base64.b64encode(KEY).decode()
    assert gc.parse_key(b64, "src") == KEY
    assert gc.parse_key(f"  {b64}\n", "src") == KEY
    cases = {"": "is empty", "not base64 at all!": "is not base64",
             base64.b64encode(KEY[:16]).decode(): "decodes to 16 bytes, not 32",
             KEY.hex(): "decodes to 48 bytes, not 32",              # hex is not the encoding
             b64[:-2]: "is not base64"}
    for text, needle in cases.items():
        with pytest.raises(UsageError) as e:
            gc.parse_key(text, "--geo-key-file /k")
        msg = str(e.value)
        assert msg.startswith("--geo-key-file /k: ") and needle in msg, msg
        assert not text or text.strip() not in msg     # the key text is never echoed
        assert e.value.exit_code == 2


def test_key_sources_file_then_environment_then_none(tmp_path):
    kf = tmp_path / "k"
    kf.write_text(base64.b64encode(KEY).decode() + "\n")
    env = {gc.KEY_ENV: base64.b64encode(OTHER).decode()}
    spec = gc.load_key(str(kf), env)
    assert spec.key == KEY and spec.source == f"--geo-key-file {kf}"
    assert "KEY" not in repr(spec) and base64.b64encode(KEY).decode() not in repr(spec)
    spec = gc.load_key(None, env)
    assert spec.key == OTHER and spec.source == "environment variable MSDB_GEO_KEY"
    assert gc.load_key(None, {}) is None
    with pytest.raises(UsageError, match="environment variable MSDB_GEO_KEY: the key is empty"):
        gc.load_key(None, {gc.KEY_ENV: ""})
    with pytest.raises(UsageError, match=f"--geo-key-file {tmp_path / 'nope'}: cannot be read"):
        gc.load_key(str(tmp_path / "nope"), {})


def test_a_generated_key_file_is_private_and_never_overwritten(tmp_path):
    p = tmp_path / "st" / "geo.key"
    spec = gc.generate_key_file(p)
    assert p.stat().st_mode & 0o777 == 0o600
    assert gc.parse_key(p.read_text(), "x") == spec.key and spec.source == f"generated {p}"
    with pytest.raises(FileExistsError):
        gc.generate_key_file(p)


def test_a_key_inside_the_copy_is_refused(tmp_path):
    geo = tmp_path / "data" / "geo"
    geo.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    for inside in (geo / "k", geo / "pg-orders" / "base" / "k", tmp_path / "link" / "geo" / "k"):
        with pytest.raises(UsageError, match="lies inside .*keep the key away"):
            gc.refuse_inside(inside, geo, "--geo-key-file", "the geo copy")
    gc.refuse_inside(tmp_path / "geo.key", geo, "--geo-key-file", "the geo copy")   # beside it: fine


# -- the leak scan --------------------------------------------------------------------

def test_scan_finds_a_needle_across_block_boundaries(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    needle = b"msdb-geo-marker-0123"
    (d / "a").write_bytes(b"x" * 5 + needle + b"y" * 40 + needle)     # needle split by 16-byte blocks
    (d / "sub" / "b").write_bytes(os.urandom(100))
    (d / "c").write_bytes(needle[:10])
    r = gc.scan_for([d], needle, block=16)
    assert r == {"files": 3, "bytes": 5 + 20 + 40 + 20 + 100 + 10, "matches": 2, "matched_files": ["a"]}
    assert gc.scan_for([d / "sub"], needle)["matches"] == 0


def test_inspect_copy_sorts_files_into_encrypted_plaintext_and_failed(tmp_path):
    root = tmp_path / "geo"
    (root / "wal").mkdir(parents=True)
    src = tmp_path / "p"
    src.write_bytes(b"data" * 100)
    gc.encrypt_file(KEY, src, root / "wal" / "good", "wal/good")
    gc.encrypt_file(KEY, src, root / "wal" / "moved", "wal/elsewhere")
    gc.encrypt_file(OTHER, src, root / "wal" / "otherkey", "wal/otherkey")
    (root / "wal" / "plain").write_bytes(b"data" * 100)
    r = gc.inspect_copy(root, KEY)
    assert (r["files"], r["encrypted"], r["plaintext"], r["plaintext_files"], r["failed_files"]) == \
        (4, 1, ["wal/plain"], 1, 2)
    assert [f["file"] for f in r["failed"]] == ["wal/moved", "wal/otherkey"]


# -- the encrypted geo sync and its restore source ------------------------------------

def _backupset(tmp_path: Path, key: bytes | None) -> BackupSet:
    rt = PgRuntime(tmp_path / "state", tmp_path / "data", tmp_path / "bin", None)
    inst = PgInstance(rt, "pg-x", 1, "pw")
    bs = BackupSet(inst, tmp_path / "backups", tmp_path / "geo", replicator_password="pw", geo_key=key)
    bs.prepare()
    inst.archive_dir.mkdir(parents=True)
    return bs


def _fake_backup(bs: BackupSet, label: str, finished_at: float, start_seg: int) -> BackupInfo:
    d = bs.base_dir / label
    (d / "base" / "5").mkdir(parents=True)
    (d / "pg_wal" / "archive_status").mkdir(parents=True)       # an empty directory PostgreSQL needs
    (d / "PG_VERSION").write_text("18\n")
    (d / "base" / "5" / "16384").write_bytes(b"heap page with msdb-geo-marker-xyz " * 3000)
    b = BackupInfo(label=label, path=str(d), started_at=finished_at - 1, finished_at=finished_at,
                   start_wal=seg_name(1, start_seg), start_lsn="0/0", bytes=3, seconds=1.0, verified=True)
    (bs.base_dir / f"{label}.json").write_text(json.dumps(b.to_json()))
    return b


def test_encrypted_geo_sync_holds_no_plaintext_and_decrypts_to_the_original(tmp_path):
    bs = _backupset(tmp_path, KEY)
    t = time.time() - 100
    _fake_backup(bs, "b0", t - 50, start_seg=1)
    b1 = _fake_backup(bs, "b1", t, start_seg=3)
    for n in range(1, 7):
        (bs.archive_dir / seg_name(1, n)).write_bytes(b"WAL msdb-geo-marker-xyz " * 500)
        os.utime(bs.archive_dir / seg_name(1, n), (t + n, t + n))
    out = bs.geo_sync()
    assert out["base_copied"] == 2 and out["wal_copied"] == 6 and out["encrypted"] and out["bytes"] > 0
    assert (bs.geo / "base" / "b1" / "pg_wal" / "archive_status").is_dir()
    needle = b"msdb-geo-marker-xyz"
    assert gc.scan_for([bs.geo], needle)["matches"] == 0
    assert gc.scan_for([bs.base_dir, bs.archive_dir], needle)["matches"] > 0        # the control
    ins = gc.inspect_copy(bs.geo, KEY)
    assert ins["files"] == ins["encrypted"] == 2 * 3 + 6
    # the copy keeps the archive's times (newest_archived and wal_chain read them)
    assert (bs.geo / "wal" / seg_name(1, 6)).stat().st_mtime == pytest.approx(t + 6)

    lost = bs.lose_region()
    assert lost == {"base_backups": 2, "archived_wal": 6}
    scratch = tmp_path / "scratch"
    src, stats = bs.geo_copy().decrypted(scratch, KEY)
    # the latest backup only, and the WAL from its start on
    assert {p.name for p in (scratch / "base").iterdir()} == {"b0.json", "b1.json", "b1"}
    assert sorted(p.name for p in (scratch / "wal").iterdir()) == [seg_name(1, n) for n in range(3, 7)]
    assert stats["files"] == 2 + 2 + 4 and stats["bytes"] > 0
    got = src.latest()
    assert got.label == "b1" and Path(got.path) == scratch / "base" / "b1"
    assert (scratch / "base" / "b1" / "base" / "5" / "16384").read_bytes() == \
        b"heap page with msdb-geo-marker-xyz " * 3000
    assert (scratch / "base" / "b1" / "pg_wal" / "archive_status").is_dir()
    assert (scratch / "wal" / seg_name(1, 6)).stat().st_mtime == pytest.approx(t + 6)
    assert src.archive_dir == scratch / "wal" and src.root == scratch
    # a target before b1's end: b0 is the one decrypted
    _, _ = bs.geo_copy().decrypted(scratch, KEY, before=b1.finished_at - 10)
    assert (scratch / "base" / "b0").is_dir() and not (scratch / "base" / "b1").exists()
    # the wrong key stops at the first file, named
    with pytest.raises(gc.AuthFailed, match=r"^base/b0\.json: chunk 0 failed authentication"):
        bs.geo_copy().decrypted(scratch, OTHER)


def test_without_a_key_the_geo_copy_is_plaintext_and_refused_by_the_decrypter(tmp_path):
    """The planted weakness's copy: the scan sees the marker, the decrypter names the file."""
    bs = _backupset(tmp_path, None)
    _fake_backup(bs, "b1", time.time() - 100, start_seg=3)
    (bs.archive_dir / seg_name(1, 3)).write_bytes(b"WAL msdb-geo-marker-xyz")
    assert bs.geo_sync()["encrypted"] is False
    assert gc.scan_for([bs.geo], b"msdb-geo-marker-xyz")["matches"] == 3001
    assert gc.inspect_copy(bs.geo, KEY)["plaintext_files"] == 4
    with pytest.raises(gc.NotEncrypted, match=r"^base/b1\.json: not an encrypted"):
        bs.geo_copy().decrypted(tmp_path / "scratch", KEY)


# -- the checks, from a synthetic run directory -----------------------------------------

def _scan(geo_matches=0, control_matches=3, plaintext=0, failed=0, files=12, planted=False) -> dict:
    return {"marker": "msdb-geo-marker-abc", "planted_plaintext": planted, "key_source": "generated /st/geo.key",
            "geo": {"root": "/geo", "files": files, "bytes": 1000 * files, "matches": geo_matches,
                    "matched_files": ["wal/x"] if geo_matches else []},
            "control": {"roots": ["/b", "/a"], "files": 9, "bytes": 9000, "matches": control_matches,
                        "matched_files": ["base/5/16384"] if control_matches else []},
            "encryption": {"format": gc.FORMAT, "files": files, "bytes": 1000 * files,
                           "encrypted": files - plaintext - failed, "plaintext_files": plaintext,
                           "plaintext": ["wal/x"] * plaintext, "failed_files": failed,
                           "failed": [{"file": "wal/y", "reason": "chunk 0 failed"}] * failed},
            "seconds": 0.1, "scanned_utc": "2026-12-01T00:00:00Z"}


def _run_dir(tmp_path: Path, scan: dict | None) -> Path:
    d = tmp_path / "run"
    d.mkdir(parents=True)
    parts = {"rto_destroy_s": 0.1, "rto_decrypt_s": 0.4, "rto_copy_s": 0.5, "rto_wal_replay_s": 1.0,
             "rto_promotion_s": 0.2, "rto_reconnect_s": 0.3}
    (d / "run.json").write_text(json.dumps({
        "scenario": "drill-restore", "status": "completed", "topology": "dedicated",
        "start": "2026-12-01T00:00:00Z", "end": "2026-12-01T00:01:00Z",
        "parameters": {"from": "geo"}, "slo": {"rpo_seconds_max": 900, "rto_seconds_max": 7200}}))
    (d / "drill.json").write_text(json.dumps({
        "metrics": {"wal": "archive", "db": "orders", "rpo_seconds": 4.0, "rpo_lost_writes": 10,
                    "rto_seconds": 2.5, **parts},
        "target": None, "rates": {"copy_mb_s": 100.0, "replay_mb_s": None, "wal_per_data_byte": 2.0,
                                  "fixed_s": 0.6}}))
    (d / "lost.json").write_text("[]")
    if scan is not None:
        (d / "geo_scan.json").write_text(json.dumps(scan))
    return d


def _verdicts(doc: dict) -> dict:
    return {c["name"]: (c["verdict"], c["measured"]) for c in doc["checks"]}


def test_geo_checks_pass_on_an_encrypted_copy_and_fail_on_a_planted_plaintext_one(tmp_path):
    doc = judge(_run_dir(tmp_path, _scan()), write=False)
    v = _verdicts(doc)
    assert v["geo-copy-encrypted"] == ("pass", 0) and v["geo-leak-scan"] == ("pass", 0)
    assert doc["verdict"] == "pass" and doc["metrics"]["geo_scan"]["control_matches"] == 3
    rto = next(c for c in doc["checks"] if c["name"] == "rto-seconds")
    assert rto["details"]["rto_decrypt_s"] == 0.4

    planted = _scan(geo_matches=4, plaintext=12, planted=True)
    d = _run_dir(tmp_path / "p", planted)
    doc = judge(d, write=False)
    v = _verdicts(doc)
    assert v["geo-copy-encrypted"] == ("fail", 12) and v["geo-leak-scan"] == ("fail", 4)
    assert doc["verdict"] == "fail"
    r = msdb("check", d, timeout=120)             # the same verdict from the run directory alone
    assert r.returncode == 1 and "geo-leak-scan" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("scan,name,verdict", [
    (_scan(control_matches=0), "geo-leak-scan", "unknown"),     # the scan saw nothing anywhere
    (_scan(files=0), "geo-leak-scan", "unknown"),
    (_scan(files=0), "geo-copy-encrypted", "unknown"),
    (_scan(failed=1), "geo-copy-encrypted", "fail"),            # a file that does not authenticate
])
def test_geo_checks_never_pass_on_a_scan_that_proves_nothing(tmp_path, scan, name, verdict):
    doc = judge(_run_dir(tmp_path, scan), write=False)
    assert _verdicts(doc)[name][0] == verdict
    assert doc["verdict"] == verdict


def test_a_drill_without_a_geo_scan_is_judged_as_before(tmp_path):
    doc = judge(_run_dir(tmp_path, None), write=False)
    assert not {"geo-copy-encrypted", "geo-leak-scan"} & set(_verdicts(doc)) and doc["verdict"] == "pass"


# -- the command line -------------------------------------------------------------------

def _args(tmp_path: Path, **kw) -> SimpleNamespace:
    return SimpleNamespace(**{"source": "primary", "state_dir": str(tmp_path / "st"), "geo_key_file": None,
                              "restore_key_file": None, **kw})


def test_geo_keys_are_checked_before_anything_starts(tmp_path, capsys):
    bad = tmp_path / "bad.key"
    bad.write_text("c2hvcnQ=\n")                        # base64 of 5 bytes
    good = tmp_path / "good.key"
    good.write_text(base64.b64encode(KEY).decode())
    good.chmod(0o600)
    other = tmp_path / "other.key"
    other.write_text(base64.b64encode(OTHER).decode())
    other.chmod(0o644)
    st = tmp_path / "st"
    key, rkey, planted = geo_keys(_args(tmp_path, source="geo", geo_key_file=str(good),
                                        restore_key_file=str(other)), {})
    assert (key.key, key.source, rkey.key, rkey.source, planted) == \
        (KEY, f"--geo-key-file {good}", OTHER, f"--restore-key-file {other}", False)
    assert f"--restore-key-file {other} can be read by others (mode 644)" in capsys.readouterr().err
    assert geo_keys(_args(tmp_path), {})[0] is None                       # generated by the drill
    assert geo_keys(_args(tmp_path), {"MSDB_DRILL_PLANT_PLAINTEXT_GEO": "1"})[2] is True
    cases = [
        (dict(geo_key_file=str(bad)), {}, f"--geo-key-file {bad}: the key decodes to 5 bytes"),
        (dict(geo_key_file=str(tmp_path / "none")), {}, f"--geo-key-file {tmp_path / 'none'}: cannot be read"),
        ({}, {"MSDB_GEO_KEY": "secret-but-not-base64"}, "environment variable MSDB_GEO_KEY: the key is not base64"),
        (dict(source="geo", restore_key_file=str(bad)), {}, f"--restore-key-file {bad}: the key decodes"),
        (dict(restore_key_file=str(good)), {}, "applies to --from geo only"),
        (dict(geo_key_file=str(st / "pg" / "geo" / "pg-orders" / "k")), {}, "lies inside"),
        (dict(geo_key_file="/var/lib/msdb/0123456789ab/geo/pg-orders/k"), {}, "lies inside /var/lib/msdb"),
        (dict(geo_key_file=str(good)), {"MSDB_DRILL_PLANT_PLAINTEXT_GEO": "yes"},
         "MSDB_DRILL_PLANT_PLAINTEXT_GEO='yes'"),
    ]
    for kw, env, needle in cases:
        with pytest.raises(UsageError) as e:
            geo_keys(_args(tmp_path, **kw), env)
        assert needle in str(e.value) and "secret-but" not in str(e.value), (kw, str(e.value))
    assert not st.exists()


@pytest.mark.parametrize("argv,env,needle", [
    (["restore", "--geo-key-file", "{bad}"], {}, "--geo-key-file {bad}: the key decodes to 5 bytes"),
    (["restore"], {"MSDB_GEO_KEY": "secret-but-not-base64"}, "environment variable MSDB_GEO_KEY"),
    (["pitr", "--geo-key-file", "{bad}"], {}, "--geo-key-file applies to `msdb drill restore` only"),
])
def test_bad_key_input_exits_2_naming_the_source(tmp_path, argv, env, needle):
    bad = tmp_path / "bad.key"
    bad.write_text("c2hvcnQ=\n")
    st = tmp_path / "st"
    r = msdb("drill", *[a.format(bad=bad) for a in argv], "--state-dir", st, "--base-port", "21400",
             "--out", tmp_path / "out", timeout=60, env={**os.environ, **env})
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle.format(bad=bad) in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "secret-but" not in r.stderr                  # a bad key is described, never echoed
    assert not st.exists() and not (tmp_path / "out").exists()
