"""Start ``python -m icg app`` on a free loopback port and drive a headless chromium against it.

Chromium: ``$ICG_CHROMIUM`` or ``/usr/bin/chromium`` (Debian's package), run with the sandbox-friendly
flags below and a new empty profile. Playwright for Python talks to it over a pipe; nothing is downloaded
(``playwright install`` is never needed). Everything here works with gradio 3.41 and current gradio.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("ICG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Nothing but the app: a web font or analytics request must fail at once, not hang the page.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)
READY = "ICG app running on "


def missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    chromium = shutil.which(CHROMIUM) or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    if chromium is None:
        return f"chromium not found at {CHROMIUM} (apt-get install chromium, or set ICG_CHROMIUM)"
    for module, package in (("playwright", "playwright"), ("gradio", "gradio")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install {package})"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class App:
    """A running ``python -m icg app`` subprocess; ``url`` once it said it is serving."""

    def __init__(self, args: Sequence[str], *, cwd: Path, timeout: float = 180.0) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", "icg", "app", "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.url: str | None = None
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        threading.Thread(target=self._read, daemon=True).start()
        # the reader sets _ready when the app says it serves, or when its output ends (it exited)
        if not self._ready.wait(timeout) or self.url is None:
            self.close()
            raise RuntimeError(f"the app did not start (exit {self.process.returncode}):\n{self.output}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith(READY) and self.url is None:
                self.url = line[len(READY) :].split()[0]
                self._ready.set()
        self._ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)


@contextlib.contextmanager
def running_app(args: Sequence[str], *, cwd: Path) -> Iterator[App]:
    app = App(args, cwd=cwd)
    try:
        yield app
    finally:
        app.close()


@contextlib.contextmanager
def browser_page(profile: Path) -> Iterator[object]:
    """A Playwright page in a headless chromium with a new empty profile folder."""
    from playwright.sync_api import sync_playwright

    profile.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            context.close()


def field(page, elem_id: str):
    """The text box (``textarea`` or ``input``) of the gradio component with ``elem_id``."""
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def wait_for_value(page, elem_id: str, pattern: str, timeout: float = 180_000) -> str:
    """Wait until the text box of ``elem_id`` matches the JavaScript regex ``pattern``; its value."""
    page.wait_for_function(
        """([id, pattern]) => {
            const box = document.querySelector(`#${id} textarea, #${id} input`);
            return box !== null && new RegExp(pattern, "s").test(box.value);
        }""",
        arg=[elem_id, pattern],
        timeout=timeout,
    )
    return field(page, elem_id).input_value()


def open_tab(page, name: str) -> None:
    """Click a tab by its label (gradio 4+ tabs have role=tab; gradio 3 tabs are plain buttons)."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() == 0:
        tab = page.locator(f"button:text-is('{name}'):visible")
    tab.first.click()
