"""The cockpit in Locust's web UI: routes under /msdb/ on Locust's own Flask
app (`environment.web_ui.app`), msdb's panels as Locust's extended tabs
and tables, and the Locust events that open and close a UI test's run.

    GET    /msdb/                 the cockpit page (fault panel, live panels, latest run)
    GET    /msdb/status           health per part, pools per service, replica and CDC lag, active faults
    GET    /msdb/faults           the faults of the current (or last) test, the kinds and targets
    POST   /msdb/faults           apply a fault: {kind, target, for, <the kind's params>}
    DELETE /msdb/faults           heal every fault
    DELETE /msdb/faults/<id>      heal one
    GET    /msdb/runs/latest      the last UI test's run directory, verdict and report link
    GET    /msdb/runs/<name>/report.html

Errors are JSON `{error, field, message}` naming the field (docs/cockpit.md).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import gevent

from flask import Blueprint, Response, jsonify, redirect, render_template, request, send_from_directory
from werkzeug.exceptions import HTTPException

from chaos.faults import NETWORK_KINDS

from ..stack.backend import StackBackend
from ..utc import utc_now
from .desk import fault_kinds
from .errors import ERRORS, ApiError
from .live import Live
from .uirun import UiRun

__all__ = ["Cockpit", "EXTENDED_TABS", "EXTENDED_TABLES"]

TEMPLATES = Path(__file__).resolve().parent / "templates"

EXTENDED_TABS = [{"title": "msdb health", "key": "msdb-health"},
                 {"title": "msdb pools", "key": "msdb-pools"},
                 {"title": "msdb lag", "key": "msdb-lag"},
                 {"title": "msdb faults", "key": "msdb-faults"},
                 {"title": "msdb run", "key": "msdb-run"}]


def _cols(*pairs: str) -> list[dict]:
    return [{"key": k, "title": t} for k, t in (p.split(":", 1) for p in pairs)]


EXTENDED_TABLES = [
    {"key": "msdb-health", "structure": _cols("name:Part", "kind:Kind", "state:State", "detail:Detail")},
    {"key": "msdb-pools", "structure": _cols("name:Service / pool", "size:Size", "available:Available",
                                             "waiting:Waiting", "wait:Wait ms / request", "max:Max")},
    {"key": "msdb-lag", "structure": _cols("name:What", "lag:Lag ms", "backlog:Backlog", "detail:Detail")},
    {"key": "msdb-faults", "structure": _cols("name:Fault", "kind:Kind", "target:Target",
                                              "params:Parameters", "status:Status", "start:Start (UTC)",
                                              "end:End (UTC)")},
    {"key": "msdb-run", "structure": _cols("name:Item", "value:Value")},
]

# The way from Locust's page to the fault panel: a fixed link after Locust's React
# root, so it stays in view on every tab.
_LINK = (b'<a id="msdb-cockpit-link" href="./msdb/" style="position:fixed;left:16px;bottom:16px;'
         b'z-index:2000;padding:8px 14px;border-radius:6px;background:#1b5e20;color:#fff;'
         b'font:600 14px sans-serif;text-decoration:none">msdb cockpit: faults</a>')


def _params(p: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items() if k not in ("stream", "toxicity")
                     or (k == "stream" and v != "downstream") or (k == "toxicity" and v != 1.0))


def _ctrl_c_to_the_main_greenlet() -> None:
    """Ctrl-C as a KeyboardInterrupt in Locust's main greenlet, where its
    shutdown (and so the cockpit's heal and verdict) waits for it.

    Python's own handler raises in whichever greenlet happens to run; with
    the panels polling every second that is often a web request's greenlet,
    which swallows it and leaves Locust running (or half shut down).  gevent
    runs this callback in the hub, and throwing into the hub's parent is how
    gevent itself delivers Ctrl-C (as harness/run/command.py does).  Left
    alone where SIGINT is ignored (a background job of a shell)."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return
    hub = gevent.get_hub()
    gevent.signal_handler(signal.SIGINT, lambda: hub.parent.throw(KeyboardInterrupt()))


class Cockpit:
    """msdb's parts in one Locust process: the live panels, the current
    UI test (its run directory and fault desk), and the routes."""

    RUN_OPEN_TIMEOUT_S = 120.0
    SWARM_GRACE_S = 5.0        # a test asked for this recently may not have reached `spawning` yet

    def __init__(self, environment, backend: StackBackend, *, runs_root: Path):
        self.environment = environment
        self.backend = backend
        self.runs_root = Path(runs_root)
        self.live = Live(backend)
        self.run: UiRun | None = None          # the current test's, then the last one's
        self.swarmed = float("-inf")          # when Locust's /swarm was last asked (monotonic)
        environment.events.test_start.add_listener(self.on_test_start)
        environment.events.test_stop.add_listener(self.on_test_stop)
        environment.events.quitting.add_listener(self.on_quitting)
        self.live.start()
        if environment.web_ui is not None:
            self._install_ui(environment.web_ui)
            _ctrl_c_to_the_main_greenlet()

    # -- Locust's events -----------------------------------------------------------------

    def on_test_start(self, environment, **kw) -> None:
        if self.run is not None and self.run.state in ("running", "stopping"):
            return
        self.live.last_asked = time.monotonic()
        try:
            self.run = UiRun(environment, self.backend, self.live, self.runs_root)
        except Exception as e:  # the load runs anyway; the UI says why there is no run directory
            print(f"msdb cockpit: no run directory for this test: {type(e).__name__}: {e}")
            return
        print(f"msdb cockpit: run directory {self.run.path}")

    def on_test_stop(self, environment, **kw) -> None:
        if self.run is not None and self.run.state == "running":
            self.run.close()
            print(f"msdb cockpit: test stopped; judging {self.run.path}")

    def on_quitting(self, environment, **kw) -> None:
        """Ctrl-C or a SIGTERM to Locust: stop the test first (heals every fault),
        and wait for its verdict and report, so the run is whole on disk."""
        runner = environment.runner
        if self.run is not None and self.run.state == "running" and runner is not None:
            runner.stop()
        self.on_test_stop(environment)
        if self.run is not None:
            self.run.wait_finished()
        self.live.stop()
        if self.backend.kind == "target":
            self.backend.down()      # the targets file's scratch state dir

    # -- the API's answers ---------------------------------------------------------------

    def test_state(self) -> dict:
        runner = self.environment.runner
        return {"state": getattr(runner, "state", None),
                "run_dir": str(self.run.path) if self.run and self.run.state == "running" else None}

    def status(self) -> dict:
        self.live.last_asked = time.monotonic()
        if not self.live.health.rows():
            self.live.sample_now()       # the first look: answer with data, not blanks
        health = self.live.health_panel()
        desk = self.run.desk if self.run else None
        return {"time": utc_now(), "test": self.test_state(),
                "healthy": bool(health) and all(p["healthy"] for p in health), "health": health,
                "pools": self.live.pools_panel(), "lag": self.live.lag_panel(),
                "faults": desk.active() if desk and self.run.state == "running" else []}

    def targets(self) -> dict:
        info = self.backend.info()
        parts = [n for n in self.backend.actions().names() if n != "proxy"]
        return {"links": [{"name": p.name, "kind": p.kind, "from": p.source, "to": p.target}
                          for p in info.proxy.proxies],
                "parts": parts}

    def faults(self) -> dict:
        all_ = self.run.desk.faults() if self.run else []
        active = [f for f in all_ if f["status"] in ("active", "scheduled")] \
            if self.run and self.run.state == "running" else []
        return {"test": self.test_state(), "active": active,
                "past": [f for f in all_ if f not in active], "kinds": fault_kinds(),
                "targets": self.targets()}

    def desk(self):
        # A test that was just started opens its run directory after seeding the
        # stack: a fault asked for meanwhile waits for it rather than failing.
        deadline = time.monotonic() + self.RUN_OPEN_TIMEOUT_S
        while (self.run is None or self.run.state != "running") and time.monotonic() < deadline \
                and (getattr(self.environment.runner, "state", None) in ("spawning", "running")
                     or time.monotonic() - self.swarmed < self.SWARM_GRACE_S):
            time.sleep(0.2)
        if self.run is None or self.run.state != "running":
            raise ApiError(409, "state", "no test is running: start a test in the Locust UI, then "
                                         "apply faults (they heal when it stops)")
        return self.run.desk

    def latest(self) -> dict:
        if self.run is None:
            return {"run_dir": None, "state": "none", "verdict": None, "report": None, "checks": [],
                    "message": "no UI test has run in this Locust process yet"}
        return self.run.summary()

    # -- Locust's web UI -----------------------------------------------------------------

    def _install_ui(self, web_ui) -> None:
        # Locust's class picker (the scenario user classes), on from the locustfile:
        # the same as `locust -f locustfile.py --class-picker`.
        web_ui.userclass_picker_is_active = True
        web_ui.template_args.update(
            extended_tabs=EXTENDED_TABS, extended_tables=EXTENDED_TABLES,
            extended_csv_files=[{"href": "./msdb/", "title": "msdb cockpit: faults and live panels"},
                                {"href": "./msdb/runs/latest/report", "title": "msdb: the last UI test's report"}])
        app = web_ui.app
        app.register_blueprint(self.blueprint())

        @app.before_request
        def _swarm_seen() -> None:
            if request.path == "/swarm" and request.method == "POST":
                self.swarmed = time.monotonic()

        @app.after_request
        def _extend(response: Response) -> Response:
            if request.path == "/stats/requests" and response.is_json:
                doc = response.get_json()
                doc["extended_stats"] = self.extended_stats()
                response.set_data(json.dumps(doc))
            elif request.path == "/" and response.status_code == 200 and response.mimetype == "text/html":
                body = response.get_data()
                if b"msdb-cockpit-link" not in body:
                    response.set_data(body.replace(b"</body>", _LINK + b"</body>", 1))
            return response

        @app.errorhandler(HTTPException)
        def _http_error(e: HTTPException):
            if request.path.startswith("/msdb/"):
                field = "method" if e.code == 405 else "path"
                return jsonify({"error": ERRORS.get(e.code, "error"), "field": field,
                                "message": f"{request.method} {request.path}: {e.description}"}), e.code
            return e

    def extended_stats(self) -> list[dict]:
        st = self.status()
        health = [{"name": p["part"], "kind": p["kind"], "state": "ok" if p["healthy"] else "DOWN",
                   "detail": p["detail"]} for p in st["health"]]
        pools = [{"name": f"{p['service']} / {p['pool']}" if p["pool"] else p["service"],
                  "size": p.get("size"), "available": p.get("available"), "waiting": p.get("waiting"),
                  "wait": p.get("wait_ms_per_request"), "max": p.get("max")}
                 for p in st["pools"]]
        lag = []
        rep = st["lag"]["replica"]
        if rep:
            lag.append({"name": f"replica {rep['standby']}", "lag": rep.get("replay_lag_ms"),
                        "backlog": None if rep.get("byte_lag") is None else f"{rep['byte_lag']} bytes",
                        "detail": rep.get("error") or rep.get("state") or ""})
        for c in st["lag"]["cdc"]:
            lag.append({"name": f"CDC {c['consumer']} ({c['source']})", "lag": c.get("lag_ms"),
                        "backlog": c.get("backlog"),
                        "detail": c.get("error") or f"{c.get('pending')} pending, {c.get('published')} published"})
        faults = [{"name": f["id"], "kind": f["kind"], "target": f["target"], "params": _params(f["params"]),
                   "status": f["status"], "start": f.get("start"), "end": f.get("end")}
                  for f in (self.run.desk.faults() if self.run else [])]
        run = self.latest()
        runrows = [{"name": "cockpit (faults, live panels)", "value": "/msdb/"},
                   {"name": "run directory", "value": run["run_dir"] or "none yet"},
                   {"name": "state", "value": run["state"]},
                   {"name": "verdict", "value": (run["verdict"] or "-").upper()},
                   {"name": "report", "value": run["report"] or "-"}]
        return [{"key": "msdb-health", "data": health}, {"key": "msdb-pools", "data": pools},
                {"key": "msdb-lag", "data": lag}, {"key": "msdb-faults", "data": faults},
                {"key": "msdb-run", "data": runrows}]

    # -- the routes ----------------------------------------------------------------------

    def blueprint(self) -> Blueprint:
        bp = Blueprint("msdb", __name__, url_prefix="/msdb", template_folder=str(TEMPLATES))

        @bp.errorhandler(ApiError)
        def _api_error(e: ApiError):
            return jsonify(e.body()), e.status

        @bp.route("/")
        def page():
            return render_template("cockpit.html.j2", network_kinds=list(NETWORK_KINDS))

        @bp.route("/status")
        def status():
            return jsonify(self.status())

        @bp.route("/faults", methods=["GET"])
        def faults():
            return jsonify(self.faults())

        @bp.route("/faults", methods=["POST"])
        def apply():
            body = request.get_json(silent=True)
            if body is None:
                raise ApiError(400, "body", "expected a JSON object (Content-Type: application/json): "
                                            "{kind, target, for, ...}")
            code, rec = self.desk().apply(body)
            return jsonify(rec), code

        @bp.route("/faults", methods=["DELETE"])
        def heal_all():
            if self.run is None:
                return jsonify({"healed": []})
            return jsonify({"healed": self.run.desk.heal_all()})

        @bp.route("/faults/<fault_id>", methods=["DELETE"])
        def heal(fault_id: str):
            if self.run is None:
                raise ApiError(404, "id", f"no fault {fault_id!r}: no UI test has run yet")
            return jsonify(self.run.desk.heal(fault_id))

        @bp.route("/runs/latest")
        def latest():
            return jsonify(self.latest())

        @bp.route("/runs/latest/report")
        def latest_report():
            report = self.latest()["report"]
            if not report:
                raise ApiError(404, "run", f"the last UI test has no report yet "
                                           f"(state: {self.latest()['state']})")
            return redirect(report)

        @bp.route("/runs/<name>/report.html")
        def report(name: str):
            if "/" in name or name.startswith("."):
                raise ApiError(404, "name", f"no run {name!r}")
            if not (self.runs_root / name / "report.html").is_file():
                raise ApiError(404, "name", f"no report for run {name!r} in {self.runs_root}")
            return send_from_directory(self.runs_root.resolve() / name, "report.html")

        return bp
