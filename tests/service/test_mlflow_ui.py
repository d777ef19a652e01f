"""The job's story in the MLflow UI, checked in a real browser (headless Chromium).

A job's history (three generations, the last opened by a shrink-and-perturb) is tracked into a real
MLflow server; Chromium (driven over the DevTools protocol, ``tests/browser.py``) opens the
experiment in the model-training view, expands the lineage tree of the runs table, and the page
must show the job's run and the generations' runs; the job's run must show the story plot among its
artifacts.

Needs Debian's ``chromium`` package: ``make check-ui`` runs this test and requires it (it also
writes the screenshots to ``docs/img/``); elsewhere the test is skipped when Chromium is missing.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from service.client import LifelongClient
from service.jobs.spec import validate_job_spec
from service.local.processes import MlflowServer
from service.runtime.generations import GenerationLedger
from service.runtime.tracking import MlflowTracker
from service.state.store import RedisStore
from tests.browser import Browser
from tests.service.conftest import LiveServer
from tests.service.test_releases import SPEC, run_history

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = os.environ.get("LIFELONG_UI_SCREENSHOTS")  # a folder: keep the screenshots there


EXPAND = """(() => {
  let clicked = 0;
  for (const button of document.querySelectorAll('button[data-component-id*="runnamecellrenderer"]')) {
    if (button.innerHTML.includes('M7.25 7.25V4.5')) { button.click(); clicked++; }  // a '+' icon
  }
  return clicked;
})()"""
PLOT = "Math.max(0, ...Array.from(document.images).map(i => i.naturalWidth))"


def _expand_nested_runs(page: Browser, innermost: str, timeout: float = 120.0) -> str:
    """Open the collapsed parent rows of the runs table (the lineage is a tree) until the
    innermost run shows; the page's text then."""
    deadline = time.monotonic() + timeout
    while innermost not in (text := page.text()).split():
        if time.monotonic() > deadline:
            raise AssertionError(f"{innermost} is not on the page; it shows: {text[:2000]}")
        page.evaluate(EXPAND)  # the rows render a moment after the table: try again
        time.sleep(1.0)
    return text


def test_the_generations_and_the_story_plot_are_on_the_mlflow_ui(
    mlflow_server: MlflowServer,
    server: LiveServer,
    client: LifelongClient,
    store: RedisStore,
    tmp_path: Path,
) -> None:
    if CHROMIUM is None:
        if os.environ.get("LIFELONG_REQUIRE_BROWSER"):
            pytest.fail("Chromium is not installed: apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium; make check-ui)")
    job = client.create_job({**SPEC, "name": "ui-story"})
    tracker = MlflowTracker.for_job(store.client, store.keys, job_id=job.id, job_name=job.name,
                                    tracking_uri=mlflow_server.url)  # fmt: skip
    ledger = GenerationLedger(store, job.id, tracker=tracker,
                              spec=validate_job_spec(SPEC, max_workers=4),
                              data_root=str(server.data_root))  # fmt: skip
    run_history(ledger, tmp_path / "ckpt")
    tracker.start()
    try:
        assert tracker.flush(240), tracker.status()
    finally:
        tracker.stop()
    experiment = ledger.tracked_ids().experiment_id
    job_run = store.client.hget(store.keys.mlflow(job.id), "job_run_id")
    assert experiment and job_run
    shots = Path(SHOTS) if SHOTS else tmp_path

    with Browser(CHROMIUM, tmp_path / "chromium") as page:
        # The experiment, in MLflow 3's model-training view: its runs, the lineage expanded.
        url = f"{mlflow_server.url}/#/experiments/{experiment}?workflowType=machine_learning"
        text = page.open(url, until="matching runs", timeout=120)
        assert "Model registry" in text, "the experiment did not open in the model-training view"
        text = _expand_nested_runs(page, "generation-2")
        for name in ("job", "generation-0", "generation-1", "generation-2"):
            assert name in text.split(), f"run {name} is not on the experiment's page"
        page.screenshot(shots / "mlflow-ui-runs.png")
        # The job's run shows the story plot among its artifacts.
        run_page = f"{mlflow_server.url}/#/experiments/{experiment}/runs/{job_run}"
        url = f"{run_page}/artifacts/plots/story.png?workflowType=machine_learning"
        page.open(url, until="plots/story.png", timeout=120)
        deadline = time.monotonic() + 60
        while page.evaluate(PLOT) < 500 and time.monotonic() < deadline:  # the plot is 990 px
            time.sleep(0.5)
        assert page.evaluate(PLOT) >= 500, "the story plot is not shown"
        page.screenshot(shots / "mlflow-ui-story.png")
