"""A headless Chromium driven over the Chrome DevTools Protocol, for tests that read rendered pages.

Chromium (Debian's package, installed by scripts/install_browser.sh) starts with networking sent
to a closed port and a remote-debugging port it picks itself; one websocket (``websocket-client``)
talks to it. A test opens a saved page, runs JavaScript in it (click a tab, read a token's
computed background colour or bounding box), moves the mouse, and takes screenshots — what a
person using the page would see, not the HTML source.

In CI (``CI=true``) a missing browser fails the test; elsewhere it is skipped.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT_S = 30
COMMAND_TIMEOUT_S = 60


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "chromium is not installed; run scripts/install_browser.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (the browser tests must run in CI)")
        pytest.skip(message)
    return path


class BrowserError(RuntimeError):
    """Chromium reported an error for a DevTools command or a page script."""


class Browser:
    """One headless Chromium and one tab (page) in it.

    Example:
        >>> with Browser(tmp_path / "profile") as browser:
        ...     browser.open(path)
        ...     browser.evaluate("document.title")
    """

    def __init__(self, profile: Path, width: int = 1100, height: int = 900) -> None:
        import websocket

        profile.mkdir(parents=True, exist_ok=True)
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a previous run's port
        self.process = subprocess.Popen(
            [
                chromium_path(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                "--font-render-hinting=none",
                "--proxy-server=127.0.0.1:9",  # any fetch (e.g. a CDN script) goes to a closed port
                "--proxy-bypass-list=<-loopback>",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Debian's launcher is a shell script: stop its whole group
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise BrowserError("chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        try:
            self._socket = websocket.create_connection(
                f"ws://127.0.0.1:{port}{path}", timeout=COMMAND_TIMEOUT_S, suppress_origin=True
            )
            target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.send("Page.enable")
            self.send("Runtime.enable")
            self.resize(width, height)
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------------------- protocol
    def _send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._socket.send(json.dumps(message))
        while True:
            reply = json.loads(self._socket.recv())
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A DevTools command to the page."""
        return self._send(method, params, self._session)

    def _wait_for_event(self, method: str, timeout: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self._events):
                if event.get("method") == method:
                    return self._events.pop(index)
            if time.monotonic() > deadline:
                raise BrowserError(f"no {method} within {timeout} s")
            self._events.append(json.loads(self._socket.recv()))

    # ----------------------------------------------------------------------------- page
    def resize(self, width: int, height: int) -> None:
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def open(self, path: Path, ready: str = "true", timeout: float = 20.0) -> None:
        """Load a file and wait for its load event and then for the JavaScript condition ``ready``."""
        self._events.clear()
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()})
        self._wait_for_event("Page.loadEventFired")
        self.wait_for(ready, timeout)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values)."""
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression[:80]}: {reply['exceptionDetails'].get('exception', reply['exceptionDetails'])}")
        return reply["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 20.0) -> None:
        """Poll the JavaScript expression ``condition`` until it is truthy."""
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"Boolean({condition})"):
            if time.monotonic() > deadline:
                raise BrowserError(f"condition not met within {timeout} s: {condition}")
            time.sleep(0.05)

    def settle(self) -> None:
        """Wait for two animation frames (React commits and the browser paints)."""
        self.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")

    def hover(self, x: float, y: float) -> None:
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        self.settle()

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})
        self.settle()

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the page (the whole document when ``full_page``)."""
        self.settle()
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            width, height = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", params)["data"]))
        return path

    # ----------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        socket = getattr(self, "_socket", None)
        if socket is not None:
            try:
                socket.close()
            except OSError:
                pass
        if self.process.poll() is None or _group_alive(self.process.pid):
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                if _group_alive(self.process.pid):
                    os.killpg(self.process.pid, signal.SIGKILL)
            for _ in range(100):  # the browser's helper processes exit after it
                if not _group_alive(self.process.pid):
                    break
                time.sleep(0.05)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
