"""The proxy answers toxiproxy-python (and raw HTTP) exactly as Toxiproxy 2.x would."""

from __future__ import annotations

import json
import socket

import pytest
import requests

from fix_cli import msdb
from chaos.client import InvalidToxic, NotFound, ProxyExists, ServerError

pytestmark = pytest.mark.proxy


def api(proxy_server, path):
    t = proxy_server.target
    return f"http://{t.host}:{t.port}{path}"


def test_version(proxy_server):
    r = requests.get(api(proxy_server, "/version"))
    assert r.status_code == 200 and r.text.endswith("}\n")
    assert json.loads(r.text)["version"]


def test_create_list_show_update_delete(clean_proxies, echo):
    s = clean_proxies
    p = s.create("echo", upstream=echo.address, listen="127.0.0.1:0")
    host, port = p.listen.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0          # the real port is reported
    assert p.enabled is True and p.upstream == echo.address
    assert set(s.proxies()) == {"echo"}
    raw = requests.get(api(s, "/proxies")).json()
    assert raw == {"echo": {"name": "echo", "listen": p.listen, "upstream": echo.address,
                            "enabled": True, "toxics": []}}
    assert requests.get(api(s, "/proxies/echo")).json()["name"] == "echo"
    r = requests.patch(api(s, "/proxies/echo"), json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=2)
    r = requests.post(api(s, "/proxies/echo"), json={"enabled": True})   # POST is the old verb
    assert r.status_code == 200 and r.json()["enabled"] is True and r.json()["listen"] == p.listen
    r = requests.delete(api(s, "/proxies/echo"))
    assert r.status_code == 204 and r.content == b""
    assert s.proxies() == {}


def test_errors_have_toxiproxy_codes_and_bodies(clean_proxies, echo):
    s = clean_proxies
    s.create("echo", upstream=echo.address)
    with pytest.raises(ProxyExists):                   # client-side check of the library
        s.create("echo", upstream=echo.address)
    r = requests.post(api(s, "/proxies"), json={"name": "echo", "upstream": echo.address})
    assert r.status_code == 409 and r.json() == {"error": "proxy already exists", "status": 409}
    r = requests.get(api(s, "/proxies/nope"))
    assert r.status_code == 404 and r.json() == {"error": "proxy not found", "status": 404}
    with pytest.raises(NotFound):
        s.proxy("nope")
    r = requests.post(api(s, "/proxies"), json={"upstream": echo.address})
    assert r.status_code == 400 and r.json()["error"] == "missing required field: name"
    r = requests.post(api(s, "/proxies"), json={"name": "x"})
    assert r.status_code == 400 and r.json()["error"] == "missing required field: upstream"
    r = requests.post(api(s, "/proxies"), data="{not json")
    assert r.status_code == 400 and r.json()["error"].startswith("bad request body")
    r = requests.post(api(s, "/proxies"), data="")
    assert r.status_code == 400 and r.json()["error"] == "bad request body: EOF"
    r = requests.get(api(s, "/proxies/echo/toxics/none"))
    assert r.status_code == 404 and r.json()["error"] == "toxic not found"
    r = requests.get(api(s, "/proxies"), headers={"User-Agent": "Mozilla/5.0"})
    assert r.status_code == 403


def test_bind_failure_is_a_500_naming_the_address(clean_proxies, echo):
    s = clean_proxies
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServerError) as e:
            s.create("clash", upstream=echo.address, listen=f"127.0.0.1:{port}")
    assert e.value.status == 500 and str(port) in e.value.message
    assert "clash" not in s.proxies()


@pytest.mark.parametrize("body,status,error", [
    ({"type": "latency", "stream": "sideways"}, 400, "stream was invalid, can be either upstream or downstream"),
    ({"type": "warp"}, 400, "invalid toxic type"),
    ({"type": "latency", "attributes": {"latency": 1.5}}, 400, "bad request body"),
    ({"type": "latency", "attributes": {"latency": "10"}}, 400, "bad request body"),
    ({"type": "latency", "attributes": {"latency": -5}}, 400, "bad request body"),
    ({"type": "slicer", "attributes": {}}, 400, "bad request body: average_size must be greater than 0"),
    ({"type": "latency", "toxicity": "high"}, 400, "bad request body"),
])
def test_bad_toxics_are_400(clean_proxies, echo, body, status, error):
    s = clean_proxies
    s.create("echo", upstream=echo.address)
    r = requests.post(api(s, "/proxies/echo/toxics"), json=body)
    assert r.status_code == status and r.json()["error"].startswith(error), r.text
    with pytest.raises(InvalidToxic):
        with s.bound():
            s.proxy("echo").add_toxic(**{"stream": "downstream", **body})


def test_toxic_lifecycle_and_shapes(clean_proxies, echo):
    s = clean_proxies
    s.create("echo", upstream=echo.address)
    t = s.add_toxic("echo", "latency", attributes={"latency": 100, "jitter": 10})
    assert t == {"attributes": {"latency": 100, "jitter": 10}, "name": "latency_downstream",
                 "type": "latency", "stream": "downstream", "toxicity": 1.0}
    r = requests.post(api(s, "/proxies/echo/toxics"), json={"type": "latency"})
    assert r.status_code == 409 and r.json()["error"] == "toxic already exists"
    up = s.add_toxic("echo", "bandwidth", stream="upstream", attributes={"rate": 100}, name="slow")
    assert up["name"] == "slow" and up["stream"] == "upstream"
    # create answers 200, not 201, as Toxiproxy does
    r = requests.post(api(s, "/proxies/echo/toxics"), json={"type": "noop", "name": "n"})
    assert r.status_code == 200
    # list: upstream first, then downstream
    assert [x["name"] for x in requests.get(api(s, "/proxies/echo/toxics")).json()] == \
        ["slow", "latency_downstream", "n"]
    # update merges attributes; name/type/stream cannot change
    u = s.update_toxic("echo", "latency_downstream", attributes={"jitter": 0}, toxicity=0.5)
    assert u["attributes"] == {"latency": 100, "jitter": 0} and u["toxicity"] == 0.5
    r = requests.patch(api(s, "/proxies/echo/toxics/latency_downstream"),
                       json={"type": "timeout", "attributes": {"latency": 7}})
    assert r.status_code == 200 and r.json()["type"] == "latency" and r.json()["attributes"]["latency"] == 7
    r = requests.patch(api(s, "/proxies/echo/toxics/latency_downstream"), json={"attributes": {"latency": 0.5}})
    assert r.status_code == 400
    assert s.toxic("echo", "latency_downstream")["attributes"]["latency"] == 7   # untouched
    assert requests.get(api(s, "/proxies/echo")).json()["toxics"][0]["name"] == "slow"
    s.remove_toxic("echo", "slow")
    r = requests.delete(api(s, "/proxies/echo/toxics/slow"))
    assert r.status_code == 404
    assert set(s.toxics("echo")) == {"latency_downstream", "n"}


def test_reset_reenables_and_removes_toxics(clean_proxies, echo):
    s = clean_proxies
    s.create("a", upstream=echo.address)
    s.create("b", upstream=echo.address)
    s.add_toxic("a", "latency", attributes={"latency": 10})
    s.set_enabled("b", False)
    r = requests.post(api(s, "/reset"))
    assert r.status_code == 204 and r.content == b""
    assert s.toxics("a") == {}
    assert s.proxies()["b"].enabled is True


def test_populate_creates_keeps_and_replaces(clean_proxies, echo):
    s = clean_proxies
    out = s.populate([{"name": "p1", "listen": "127.0.0.1:0", "upstream": echo.address},
                      {"name": "p2", "listen": "127.0.0.1:0", "upstream": echo.address, "enabled": False}])
    assert [p["name"] for p in out] == ["p1", "p2"] and out[1]["enabled"] is False
    s.add_toxic("p1", "latency", attributes={"latency": 5})
    listen = out[0]["listen"]
    # same listen and upstream: kept as is, toxics included
    again = s.populate([{"name": "p1", "listen": listen, "upstream": echo.address}])
    assert again[0]["toxics"] and again[0]["listen"] == listen
    # different upstream: replaced by a fresh proxy without toxics
    other = s.populate([{"name": "p1", "listen": listen, "upstream": "127.0.0.1:9"}])
    assert other[0]["toxics"] == [] and other[0]["upstream"] == "127.0.0.1:9"
    r = requests.post(api(s, "/populate"), json=[{"name": "ok", "upstream": echo.address}, {"name": "x"}])
    assert r.status_code == 400 and r.json()["error"] == "missing required field: upstream at proxy 2"
    assert "ok" not in s.proxies()         # checked before anything changed
    r = requests.post(api(s, "/populate"), json={"name": "x"})
    assert r.status_code == 400


def test_config_file_and_cli_errors(tmp_path, echo):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x"}')
    r = msdb("proxy", "--port", "1", "--config", bad, timeout=30)
    assert r.returncode == 2 and "bad.json" in r.stderr
    missing = tmp_path / "cfg.json"
    missing.write_text(json.dumps([{"name": "x", "listen": "127.0.0.1:0"}]))
    r = msdb("proxy", "--config", missing, timeout=30)
    assert r.returncode == 2 and "missing required field: upstream at proxy 1" in r.stderr
    r = msdb("proxy", "--host", "0.0.0.0", timeout=30)
    assert r.returncode == 2 and "loopback" in r.stderr
