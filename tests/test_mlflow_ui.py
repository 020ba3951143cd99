"""The MLflow UI, as a person opens it (README): `mlflow ui` on 127.0.0.1 over the store of a sweep
the tests ran, loaded in headless Chromium; the rendered pages list the experiment's loops and show
an iteration run nested under its loop."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from csr_runs import BIN, LAMS, sweep, tiny_env

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: dict | None = None) -> dict:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def ui(tiny_models, tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)")
    store = sweep(tmp_path_factory, tiny_env(tiny_models)) / "mlflow.db"
    port = _free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{store}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("mlflow ui did not come up") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the CLI, uvicorn and its worker
        server.wait(timeout=30)


def _page_text(url: str, profile: Path) -> str:
    """What the page shows once its JavaScript has run, as plain text."""
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--virtual-time-budget=15000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    text = re.sub(r"<script.*?</script>|<style.*?</style>|<[^>]+>", " ", proc.stdout, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(text))


def test_ui_lists_the_loops_and_their_nested_iterations(ui, tmp_path):
    experiment = _get(f"{ui}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=csr")["experiment"]
    eid = experiment["experiment_id"]
    runs = _get(f"{ui}/ajax-api/2.0/mlflow/runs/search", {"experiment_ids": [eid]})["runs"]
    assert len(runs) == 4  # 2 loops, each with 1 nested iteration run

    text = _page_text(f"{ui}/#/experiments/{eid}/runs", tmp_path / "p1")
    assert "csr" in text and "4 matching runs" in text
    for lam in LAMS:
        assert f"lam_{lam}" in text  # the parent runs, one per swept value

    nested = next(r for r in runs if r["data"].get("tags") and
                  {"key": "csr.iteration", "value": "1"} in r["data"]["tags"])
    parent_id = next(t["value"] for t in nested["data"]["tags"] if t["key"] == "mlflow.parentRunId")
    parent = next(r for r in runs if r["info"]["run_id"] == parent_id)
    text = _page_text(f"{ui}/#/experiments/{eid}/runs/{nested['info']['run_id']}", tmp_path / "p2")
    assert "iter_1" in text and f"Parent run {parent['info']['run_name']}" in text
    assert "pairs/margin" in text  # the iteration's stage statistics
