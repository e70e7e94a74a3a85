"""A PNG of MLflow's compare view of every ablation row's parent run (how reports/mlflow_compare.png was made).

    # 1. a tracking server and a run to look at (here the tiny profile; any `dvc repro` works too)
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false .venv/bin/mlflow ui --backend-store-uri sqlite:////tmp/shot/mlflow.db \\
        --artifacts-destination /tmp/shot/artifacts --host 127.0.0.1 --port 5077 --workers 1 &
    PYTHONPATH=. .venv/bin/python -m tests.pipeline.tiny_profile /tmp/shot/run http://127.0.0.1:5077 qlora-tiny-profile
    # 2. the screenshot: Debian's chromium (apt-get install chromium) driven over the DevTools protocol
    pip install websocket-client   # (not a project dependency)
    python scripts/mlflow_compare_screenshot.py http://127.0.0.1:5077 qlora-tiny-profile reports/mlflow_compare.png

The script selects the experiment's parent runs (tag `qlora.row`), opens the compare view in headless
Chromium, closes the assistant panel and lets the parameter and metric tables grow to their full
height (they scroll inside a box otherwise), then captures the whole page.

The command line's runs (reports/mlflow_cli_runs.png, 2026-12-06, SmolLM2):

    # a few `qlora` commands logged to a fresh store (finetune on Alpaca and on chat records, one killed
    # and resumed, quantize, eval), then the server the way a user starts it
    MLFLOW_TRACKING_URI=sqlite:////tmp/shot/mlflow.db python -m qlora finetune --out runs/alpaca-fp4 ...
    MLFLOW_TRACKING_URI=sqlite:////tmp/shot/mlflow.db python -m qlora pipeline mlflow --port 5091 &
    python scripts/mlflow_compare_screenshot.py http://127.0.0.1:5091 qlora-cli reports/mlflow_cli_runs.png --experiment-page
    python scripts/mlflow_compare_screenshot.py http://127.0.0.1:5091 qlora-cli /tmp/shot/compare.png --all-runs   # (optional)

`--experiment-page` captures the experiment's runs page (the link `qlora pipeline mlflow` prints) with the
params that tell the runs apart as columns (`CLI_COLUMNS`); `--all-runs` the compare view of every run.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--remote-allow-origins=*"]  # fmt: skip
EXPAND = r"""(() => {
  for (const b of document.querySelectorAll('button')) {
    if ((b.getAttribute('aria-label') || '').toLowerCase().includes('close')) b.click();
  }
  let n = 0;
  for (const el of document.querySelectorAll('*')) {
    const s = getComputedStyle(el);
    if (['auto', 'scroll', 'hidden'].includes(s.overflowY) && el.scrollHeight > el.clientHeight + 4 && el.clientHeight > 100
        && el.tagName !== 'HTML' && el.tagName !== 'BODY') {
      el.style.maxHeight = 'none'; el.style.height = 'auto'; el.style.overflow = 'visible'; n++;
    }
  }
  return n;
})()"""


CLOSE_PANELS = r"""(() => {
  for (const b of document.querySelectorAll('button')) {
    if ((b.getAttribute('aria-label') || '').toLowerCase().includes('close')) b.click();
  }
})()"""
CLICK_TEXT = r"""((text) => {
  const all = [...document.querySelectorAll('button, [role=menuitemcheckbox], [role=option], [role=treeitem], label, span, div')];
  const hit = all.filter(e => e.textContent.trim() === text && e.offsetParent !== null).pop();
  if (!hit) return false;
  hit.click();
  return true;
})"""


CLI_COLUMNS = ("data.format", "data.records", "data.path", "quant.label", "resumed_from_step", "out")  # what tells `qlora` runs apart


def _api(base: str, endpoint: str, body: dict | None = None, **query) -> dict:
    url = f"{base}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST" if data else "GET")
    return json.loads(urllib.request.urlopen(request, timeout=30).read())


def experiment_url(base: str, experiment: str) -> str:
    """The experiment's page in MLflow's *Model training* view (the link `qlora pipeline mlflow` prints)."""
    exp = _api(base, "experiments/get-by-name", experiment_name=experiment)["experiment"]
    return f"{base}/#/experiments/{exp['experiment_id']}?workflowType=machine_learning"


def compare_url(base: str, experiment: str, *, all_runs: bool = False) -> str:
    """The compare view of the ablation rows' parent runs (tag `qlora.row`), or of every run (`all_runs`)."""
    exp = _api(base, "experiments/get-by-name", experiment_name=experiment)["experiment"]
    runs = _api(base, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000})["runs"]
    chosen = (r for r in runs if all_runs or any(t["key"] == "qlora.row" for t in r["data"].get("tags", [])))
    rows = sorted(chosen, key=lambda r: r["info"]["run_name"])
    ids = [r["info"]["run_id"] for r in rows]
    return f"{base}/#/compare-runs?runs={urllib.parse.quote(json.dumps(ids))}&experiments={urllib.parse.quote(json.dumps([exp['experiment_id']]))}"


def screenshot(url: str, out: str, *, width: int = 1500, port: int = 9333, expand: bool = True, columns: tuple[str, ...] = (),
               height: int = 1800) -> None:  # fmt: skip
    """expand: close side panels and let inner scrolling tables grow (the compare view); False: the page as it opens.
    columns: params to show as columns of the runs table (ticked in its *Columns* menu)."""
    import websocket  # websocket-client

    with tempfile.TemporaryDirectory() as profile:
        chrome = subprocess.Popen(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
                                   f"--window-size={width},{height}", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            for _ in range(120):
                try:
                    targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5).read())
                    break
                except OSError:
                    time.sleep(0.5)
            ws = websocket.create_connection(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"], timeout=60)
            counter = [0]

            def call(method: str, **params):
                counter[0] += 1
                ws.send(json.dumps({"id": counter[0], "method": method, "params": params}))
                while True:
                    message = json.loads(ws.recv())
                    if message.get("id") == counter[0]:
                        return message.get("result", message)

            call("Page.enable")
            call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            call("Page.navigate", url=url)
            time.sleep(12)  # the React app loads the runs
            for _ in range(2 if expand else 0):
                call("Runtime.evaluate", expression=EXPAND, returnByValue=True)
                time.sleep(3)
            if columns:
                call("Runtime.evaluate", expression=CLOSE_PANELS)
                call("Runtime.evaluate", expression=f"{CLICK_TEXT}('Columns')")
                time.sleep(2)
                for name in columns:
                    clicked = call("Runtime.evaluate", expression=f"{CLICK_TEXT}({json.dumps(name)})", returnByValue=True)
                    if not clicked["result"].get("value"):
                        raise SystemExit(f"no column {name!r} in the Columns menu")
                    time.sleep(0.5)
                call("Runtime.evaluate", expression="document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}))")
                call("Runtime.evaluate", expression="document.body.click()")
                time.sleep(2)
            page = call("Runtime.evaluate", expression="document.documentElement.scrollHeight", returnByValue=True)["result"]["value"]
            shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": width, "height": max(page, height), "scale": 1})  # fmt: skip
            with open(out, "wb") as fh:
                fh.write(base64.b64decode(shot["data"]))
        finally:
            chrome.terminate()
            chrome.wait(10)


if __name__ == "__main__":
    argv = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = set(sys.argv[1:]) - set(argv)
    if len(argv) != 3 or not flags <= {"--experiment-page", "--all-runs"}:
        sys.exit(__doc__)
    base, experiment, out = argv
    if "--experiment-page" in flags:
        screenshot(experiment_url(base, experiment), out, expand=False, columns=CLI_COLUMNS, width=2300, height=560)
    else:
        screenshot(compare_url(base, experiment, all_runs="--all-runs" in flags), out)
