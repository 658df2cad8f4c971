"""The sampler widget in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by Playwright.

Skipped when Chromium or Playwright is missing, unless MOELAB_REQUIRE_BROWSER=1 (CI sets
it, after installing Debian's chromium) makes that a failure.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from moelab import ModelConfig, Transformer, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _require(reason: str):
    if os.environ.get("MOELAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MOELAB_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """JupyterLab serving a copy of notebook 04, with a trained (tiny, untrained-weights) run to sample from."""
    data, reports, workdir = tmp_path / "data", tmp_path / "reports", tmp_path / "lab"
    workdir.mkdir()
    shutil.copy(ROOT / "notebooks" / "04_sampling.ipynb", workdir)  # the UI marks it dirty: never the original
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=2, n_heads=2, n_embd=32, context_window=32, n_experts=4, top_k=2, expert_hidden=32))
    save_checkpoint(data / "checkpoints" / "tiny" / "ckpt_0000001.pt", model)
    (reports / "tiny").mkdir(parents=True)
    # JupyterLab 4 renders only the visible cells; render them all so the widget is in the page
    settings = tmp_path / "lab-settings"
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)  # and no news pop-up over the page
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "MOELAB_DATA_DIR": str(data),
        "MOELAB_REPORTS_DIR": str(reports),
        "MOELAB_PROFILE": "tiny",
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True", "--allow-root",
         f"--ServerApp.root_dir={workdir}", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("JupyterLab did not start within 60 s")
                time.sleep(0.5)
        yield f"{base}/lab/tree/04_sampling.ipynb?token={token}", reports
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def test_sampler_generates_text_in_a_real_browser(jupyterlab, tmp_path):
    if CHROMIUM is None:
        _require("no Chromium on this machine (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require("Playwright is not installed (it comes with `make setup`)")
    url, reports = jupyterlab
    started = time.monotonic()
    screenshot = Path(os.environ.get("MOELAB_SCREENSHOT_DIR", tmp_path)) / "sampler_widget.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(url)
            page.wait_for_function("window.jupyterapp !== undefined", timeout=60_000)
            page.wait_for_selector(".jp-Notebook", timeout=60_000)
            page.wait_for_function(  # the moelab kernel has started
                "window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'",
                timeout=90_000,
            )
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            generate = page.locator(".moelab-generate")
            generate.wait_for(timeout=120_000)
            prompt = page.locator(".moelab-prompt textarea")
            prompt.fill("Capitu olhou para mim")
            generate.scroll_into_view_if_needed()
            generate.click()
            page.wait_for_function(
                "document.querySelector('.moelab-status')?.innerText.includes('done')", timeout=120_000
            )
            output = page.locator(".moelab-output").inner_text()
            page.locator(".moelab-output").scroll_into_view_if_needed()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    assert "Sample 1" in output and "Capitu olhou para mim" in output
    assert len(output) > len("Sample 1Capitu olhou para mim") + 50  # generated text appeared
    assert (reports / "tiny" / "samples.md").is_file()  # the notebook's headless part ran too
    print(f"browser test: {time.monotonic() - started:.1f} s, screenshot {screenshot}")
