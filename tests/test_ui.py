"""`mlflow ui` in a real browser (headless Chromium): after a quick search, the link the summary
prints opens the study's trials, best valid RMSE first, with the searched parameters as columns.
Screenshots go to $PIPELINE_UI_SCREENSHOTS (default test-artifacts/mlflow-ui/), kept by CI."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Workspace, free_port, wait_until_up

pytestmark = pytest.mark.slow

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
SCREENSHOTS = Path(os.environ.get("PIPELINE_UI_SCREENSHOTS", Path(__file__).parent.parent / "test-artifacts" / "mlflow-ui"))


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A finished quick study and `mlflow ui` serving it on a loopback port: (workspace, base URL, link)."""
    if BROWSER is None:
        pytest.skip("no headless browser: `apt-get install chromium` (.ci/run does) to run the mlflow ui test")
    ws = Workspace(tmp_path_factory.mktemp("ui"))
    done = subprocess.run([sys.executable, "-m", "pipeline.search", *ws.argv("--n-trials", "8")], cwd=ws.root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    link = re.search(r"then open http://127\.0\.0\.1:5000/(\S+)", done.stdout).group(1)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", ws.uri, "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], cwd=ws.root, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/health", server)
        yield ws, base, link
    finally:
        server.terminate()
        server.wait(30)


def _browse(url: str, screenshot: str) -> str:
    """The page's DOM after its scripts ran; a screenshot beside it."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # wide: the grid renders only the columns in view (metrics first, then the parameters)
    flags = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=3000,1000",
             "--virtual-time-budget=20000"]
    subprocess.run([*flags, f"--screenshot={SCREENSHOTS / screenshot}", url], capture_output=True, timeout=120)
    return subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout


def test_the_printed_link_opens_the_trials_sorted_with_their_columns(ui):
    ws, base, link = ui
    dom = _browse(f"{base}/{link}", "trials.png")
    columns = set(re.findall(r'col-id="([^"]+)"', dom))
    assert {"metrics.`best_valid_rmse`", "metrics.`best_epoch`"} <= columns
    assert {f"params.`{p}`" for p in ("optimizer", "factors", "lr", "l2", "batch_size")} <= columns
    assert {f"metrics.`valid_{m}`" for m in ("ndcg_at_10", "recall_at_10", "map_at_10")} <= columns
    shown = re.findall(r">(trial-\d+)<", dom)
    trials = [r for r in ws.runs() if r.info.run_name.startswith("trial-")]
    best_first = sorted(trials, key=lambda r: r.data.metrics.get("best_valid_rmse", float("inf")))
    assert shown == [r.info.run_name for r in best_first]  # every trial (pruned ones too), best first
    assert not any(r.info.run_name.startswith("ratings-") for r in trials)  # the parent is not among them
    assert (SCREENSHOTS / "trials.png").stat().st_size > 10_000
