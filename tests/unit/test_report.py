"""The report of a checked-in fault run: self-contained HTML that a real browser
renders with every chart, a PDF that carries the verdict table, and both
rebuilt from the run directory alone."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from fix_cli import msdb
from reports.build import build_index, build_report
from reports.templating import fmt

DATA = Path(__file__).resolve().parents[1] / "data"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    run = root / "run"
    shutil.copytree(DATA / "run-db-latency", run)
    build_report(run)
    build_index(root)
    return run


def test_report_and_index_are_written(fault_run):
    assert (fault_run / "report.html").stat().st_size > 10_000
    assert (fault_run / "report.pdf").read_bytes()[:5] == b"%PDF-"
    index = (fault_run.parent / "index.html").read_text()
    assert 'href="run/report.html"' in index and "db-latency" in index


def test_html_is_self_contained_and_marks_stand_ins(fault_run):
    html = (fault_run / "report.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), [r[:40] for r in refs]
    assert "<style>" in html and "stylesheet" not in html
    assert 'id="stand-ins"' in html and "for elasticsearch" in html


@pytest.mark.slow
def test_report_renders_in_headless_chromium(fault_run, tmp_path):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto((fault_run / "report.html").as_uri())
        images = page.eval_on_selector_all("img.chart", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])")
        rows = page.locator("#verdict-table tr").count()
        verdict = page.locator("#verdict").inner_text()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    checks = json.loads((fault_run / "results.json").read_text())["checks"]
    assert rows == len(checks) + 1                              # header + one row per check
    assert verdict == "PASS"
    titles = {alt for alt, _, _ in images}
    assert {"Throughput", "Latency", "Connection pools", "Database query latency"} <= titles
    assert all(done and width > 0 for _, done, width in images), images
    assert requests == [(fault_run / "report.html").as_uri()]    # opens offline: nothing else fetched


def test_pdf_text_carries_the_verdict_table(fault_run):
    from pypdf import PdfReader
    text = "\n".join(page.extract_text() for page in PdfReader(str(fault_run / "report.pdf")).pages)
    assert "Verdicts" in text
    for c in json.loads((fault_run / "results.json").read_text())["checks"]:
        assert c["name"].split("-")[0] in text
    assert "injected-latency-observed" in text.replace("\n", "") or "injected-latency-" in text


@pytest.mark.slow   # several seconds: the full suite runs it, the fast loop does not
def test_msdb_report_rebuilds_from_the_run_directory_alone(fault_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(fault_run, copy)
    (copy / "report.html").unlink()
    (copy / "report.pdf").unlink()
    r = msdb("report", copy, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (copy / "report.html").exists() and (copy / "report.pdf").exists()
    bad = msdb("report", tmp_path, timeout=60)
    assert bad.returncode == 2 and "no run.json" in bad.stderr


def test_capacity_report_shows_the_knee_and_its_steps(tmp_path):
    run = tmp_path / "cap"
    shutil.copytree(DATA / "run-capacity", run)
    html_path, _ = build_report(run, pdf=False)
    html = html_path.read_text()
    doc = json.loads((run / "results.json").read_text())
    assert 'id="knee-table"' in html and 'id="steps-table"' in html
    for s in doc["metrics"]["steps"]:
        assert f">{fmt(s['p99_ms'])}<" in html        # the same figure the verdict judged, rounded


def test_a_matrix_parent_gets_its_comparison_report(tmp_path):
    """noisy-neighbour's own run directory holds no load of its own: its report
    is the comparison of its children's verdicts."""
    from rundirs import make_run
    parent = tmp_path / "nn"
    make_run(parent, scenario="noisy-neighbour", info={"matrix": ["single"], "topology": "single"})
    make_run(parent / "single", scenario="noisy-neighbour-one",
             info={"slo": {"healthy_after_s": 30, "neighbour_p95_ratio_max": 10}})
    r = msdb("check", parent, "--write", timeout=120)
    assert r.returncode in (0, 1, 3), r.stderr
    html = (parent / "report.html").read_text()
    assert 'id="comparison-table"' in html and "single/report.html" in html


def test_pdf_tables_stay_on_the_page(fault_run):
    """The replication table's last column ran off the page (its header was cut
    to `replica_lag_p99_ou`).  pypdf: the whole header is there; poppler's
    word boxes, where installed: no word ends past the right margin."""
    import subprocess
    from pypdf import PdfReader
    pdf = fault_run / "report.pdf"
    text = " ".join(page.extract_text() for page in PdfReader(str(pdf)).pages)
    text = re.sub(r"\s+", " ", text)
    assert "lag p99 outside the faults" in text
    pdftotext = shutil.which("pdftotext")
    if pdftotext is None:
        return
    boxes = subprocess.run([pdftotext, "-bbox", str(pdf), "-"], capture_output=True, text=True,
                           check=True).stdout
    width = float(re.search(r'<page width="([0-9.]+)"', boxes).group(1))
    margin = 12 / 25.4 * 72                          # @page margin 12 mm, in points
    off = [(w, float(x)) for x, w in re.findall(r'xMax="([0-9.]+)"[^>]*>([^<]*)<', boxes)
           if float(x) > width - margin + 2]
    assert not off, off
