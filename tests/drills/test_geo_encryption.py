"""The encrypted geo copy's failure cases on real PostgreSQL (the success case,
an encrypted copy restored through its decryption, is the `geo` drill of
test_drill_e2e.py).  Two drills at once, on the port blocks after that file's
six (fix_drills.geo_drills):

- planted: MSDB_DRILL_PLANT_PLAINTEXT_GEO=1 writes the geo copy unencrypted;
  the leak scan finds the drill's marker in it and geo-copy-encrypted names
  plaintext files: exit 1, and `msdb check` judges the same from the run
  directory alone;
- wrongkey: the copy is written with key A and restored --from geo with key
  B: exit 3, the error names the key's source and the first file that failed
  authentication, and nothing was restored.
"""

from __future__ import annotations

import base64
import json

import pytest

from fix_cli import msdb
from fix_drills import GEO_KEY_A, GEO_KEY_B

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _no_key_in(d: dict, *keys: str) -> None:
    for text in keys:
        raw = base64.b64decode(text)
        assert text not in d["log"]
        for p in d["out"].rglob("*"):
            if p.is_file():
                body = p.read_bytes()
                assert text.encode() not in body and raw not in body and raw.hex().encode() not in body, p


def test_a_planted_plaintext_geo_copy_fails_its_checks(geo_drills):
    d = geo_drills["planted"]
    res = d["results"]
    assert res is not None and d["rc"] == 1, d["log"]
    checks = {c["name"]: c for c in res["checks"]}
    leak, enc = checks["geo-leak-scan"], checks["geo-copy-encrypted"]
    assert leak["verdict"] == "fail" and leak["measured"] > 0, leak
    assert leak["details"]["control_matches"] > 0 and leak["details"]["matched_files"], leak
    assert enc["verdict"] == "fail" and enc["measured"] == enc["details"]["files"] > 0, enc
    # only the planted weakness fails: the restore itself worked
    assert {n for n, c in checks.items() if c["verdict"] != "pass"} == {"geo-leak-scan", "geo-copy-encrypted"}
    assert "PLANTED WEAKNESS" in d["log"]
    assert res["metrics"]["geo_key_source"] == "environment variable MSDB_GEO_KEY"
    _no_key_in(d, GEO_KEY_A)
    r = msdb("check", d["out"], "--json", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert [(c["name"], c["verdict"], c["measured"]) for c in json.loads(r.stdout)["checks"]] == \
        [(c["name"], c["verdict"], c["measured"]) for c in res["checks"]]


def test_a_wrong_key_fails_the_restore_naming_its_source_and_the_file(geo_drills):
    d = geo_drills["wrongkey"]
    assert d["rc"] == 3, d["log"]
    assert d["results"] is None                      # nothing was restored, so nothing is judged
    b = geo_drills["keys"] / "b.key"
    assert f"the geo copy does not decrypt with the key from --restore-key-file {b}" in d["log"], d["log"]
    assert "chunk 0 failed authentication" in d["log"] and "nothing was restored" in d["log"]
    run = json.loads((d["out"] / "run.json").read_text())
    assert run["status"] == "error" and f"--restore-key-file {b}" in run["error"]
    label = json.loads((d["out"] / "geo_scan.json").read_text())
    first = run["error"].split(": ")[1].split(" ")[0]     # the first file that failed: a backup's description
    assert first.startswith("base/") and first.endswith(".json"), run["error"]
    # the copy itself was sound: written with key A, every file authenticated with it
    assert label["encryption"]["encrypted"] == label["encryption"]["files"] > 0
    assert label["geo"]["matches"] == 0 and label["control"]["matches"] > 0
    assert "Traceback" not in d["log"]
    _no_key_in(d, GEO_KEY_A, GEO_KEY_B)
