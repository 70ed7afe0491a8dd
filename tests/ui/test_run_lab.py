"""`bash run.sh lab`, the README's main command, started for real: /lab answers and the quickstart opens.

The launch runs on the venv of this test run. When that venv's set-up stamp is current (CI: `bash run.sh test`
has just set it up) the command goes through its whole path, stamp check included; otherwise (a venv managed
by hand) it runs with GEMSCOPE_SETUP=skip so that the test never reinstalls into somebody's environment.
As root (CI, containers) it is also started as an unprivileged user, since JupyterLab treats the two apart.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.lab import LabSession, _free_port, _isolated_env

REPO = Path(__file__).resolve().parents[2]
START_S = 180.0  # two slow shared cores: generous, this is not a timing test
NODE_ERRORS = ("Dynamic require of", "require is not defined", "ERR_REQUIRE_ESM", "Fail to get yarn configuration")

pytestmark = [pytest.mark.browser]


def _setup_mode(env: dict[str, str]) -> str:
    check = subprocess.run(
        ["bash", str(REPO / "run.sh"), "lab"], env={**env, "GEMSCOPE_SETUP": "check"}, capture_output=True
    )
    if check.returncode == 0:
        return "auto"
    if os.environ.get("CI"):
        pytest.fail("`bash run.sh test` set this venv up, yet run.sh finds its set-up stamp out of date")
    return "skip"


def _launch(tmp_path: Path, user: str | None) -> tuple[LabSession, str]:
    env = _isolated_env(tmp_path)
    env["GEMSCOPE_VENV"] = sys.prefix
    env["GEMSCOPE_SETUP"] = _setup_mode(env)
    token = secrets.token_hex(16)
    port = _free_port()
    command = [
        "bash", str(REPO / "run.sh"), "lab",
        "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.expose_app_in_browser=True",
    ]  # fmt: skip
    if user is not None:
        os.chmod(tmp_path, 0o755)
        for path in [tmp_path, *tmp_path.rglob("*")]:
            shutil.chown(path, user)
        command = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in env.items()), *command]
    log_path = tmp_path / "run-lab.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    session = LabSession(f"http://127.0.0.1:{port}", token, REPO / "examples", log_path, process)
    started = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"run.sh lab exited with code {process.returncode}:\n{session.log_tail(60)}")
            try:
                session.api("GET", "/api/status", timeout=5)
                break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - started > START_S:
                pytest.fail(f"run.sh lab did not answer within {START_S:.0f} s:\n{session.log_tail(60)}")
            time.sleep(0.25)
    except BaseException:
        session.stop()
        raise
    return session, env["GEMSCOPE_SETUP"]


def _runtime_dir(base: Path) -> Path:
    """The Jupyter runtime folder of the isolated settings made by ``_isolated_env(base)``."""
    return base / "runtime"


def _unprivileged_user() -> str | None:
    if os.getuid() != 0 or shutil.which("runuser") is None:
        return None
    for name in ("nobody", "daemon"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        probe = subprocess.run(
            ["runuser", "-u", name, "--", "env", f"PYTHONPATH={REPO}", sys.executable, "-c", "import gemscope_widgets"],
            cwd="/",
            capture_output=True,
        )
        return name if probe.returncode == 0 else None
    return None


@pytest.mark.parametrize("who", ["current user", "unprivileged user"])
def test_run_sh_lab_answers_and_opens_the_quickstart(browser, tmp_path, who):
    user = None
    if who == "unprivileged user":
        user = _unprivileged_user()
        if user is None:
            pytest.skip("needs root, runuser, and a venv and checkout that an unprivileged user can read")
    # pytest's own temporary folders are private to the user running the tests.
    base = Path(tempfile.mkdtemp(prefix="gemscope-run-lab-")) if user else tmp_path
    try:
        _check_launch(browser, base, user)
    finally:
        if user:
            shutil.rmtree(base, ignore_errors=True)


def _git_status(path: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", str(path)], capture_output=True, text=True, check=True
    ).stdout


def _check_launch(browser, base: Path, user: str | None) -> None:
    examples_before = _git_status(REPO / "examples")
    session, setup = _launch(base, user)
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    try:
        with urllib.request.urlopen(f"{session.url}/lab?token={session.token}", timeout=30) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
        # `run.sh lab` names the quickstart on the command line: the page the server hands to a browser
        # (the same with or without --no-browser) opens it, with a kernel.
        opener = next(Path(_runtime_dir(base)).glob("jpserver-file-to-run-*-open.html"), None)
        assert opener is not None, "the server wrote no page for opening the quickstart"
        url = re.search(r'href="([^"]+)"', opener.read_text()).group(1).replace("&amp;", "&")
        assert "/lab/tree/quickstart.ipynb" in url, url
        page = context.new_page()
        page.goto(url, wait_until="domcontentloaded")
        session._wait(page, _NOTEBOOK_OPEN, "quickstart.ipynb", 180_000, "the quickstart to open with a kernel")
        cells = page.evaluate("() => window.jupyterapp.shell.currentWidget.content.widgets.length")
        assert cells > 5
        # The lab serves a copy outside the checkout: File > New lands there, and autosave cannot touch examples/.
        copy = base / "home" / "gemscope-notebooks"
        assert (copy / "quickstart.ipynb").is_file(), "run.sh lab did not open a copy of the examples"
        made = session.api("POST", "/api/contents", {"type": "notebook"})
        assert (copy / made["path"]).is_file() and not (REPO / "examples" / made["path"]).exists()
        session.api("DELETE", f"/api/contents/{made['path']}")
        assert _git_status(REPO / "examples") == examples_before
        log = session.log_path.read_text(errors="replace")  # the launch's output, not the shutdown's
    finally:
        context.close()
        session.stop()
    for marker in NODE_ERRORS:
        assert marker not in log, f"{marker!r} in the launch output:\n{log[-4000:]}"
    assert "Running as root is not recommended" not in log
    assert "Traceback" not in log, log[-4000:]
    if setup == "auto":
        assert "set-up is current" in log, "the stamp said current, yet run.sh set up again"


_NOTEBOOK_OPEN = """(path) => {
  const app = window.jupyterapp;
  const nb = app && app.shell && app.shell.currentWidget;
  if (!nb || !nb.context || nb.context.path !== path || !nb.sessionContext) return false;
  const sc = nb.sessionContext;
  return !!(sc.session && sc.session.kernel) && sc.kernelDisplayStatus === 'idle' && nb.content.widgets.length > 0;
}"""


def test_run_sh_lab_copies_examples_once_and_never_overwrites(tmp_path):
    """The copy is the user's: a changed notebook survives the next launch, a missing one is copied again."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    mine = notebooks / "quickstart.ipynb"
    mine.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    env = {**os.environ, "GEMSCOPE_NOTEBOOKS": str(notebooks), "GEMSCOPE_VENV": sys.prefix, "GEMSCOPE_SETUP": "skip"}
    before = _git_status(REPO / "examples")
    done = subprocess.run(["bash", str(REPO / "run.sh"), "lab", "--version"], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert mine.read_text().startswith('{"cells": []'), "run.sh lab overwrote the user's copy"
    assert "keeping your" in done.stdout and "quickstart.ipynb" in done.stdout
    for example in (REPO / "examples").glob("*.ipynb"):
        if example.name != "quickstart.ipynb":
            assert (notebooks / example.name).read_bytes() == example.read_bytes()
    assert _git_status(REPO / "examples") == before
