"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol: open a page, click, read the DOM,
take a screenshot. Why the protocol and not `--dump-dom`: the MLflow UI draws a run's charts only inside
expanded sections, and a section is expanded by a click."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import websocket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Chromium:
    def __init__(self, width: int = 1400, height: int = 1000) -> None:
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        assert exe, "headless Chromium is needed: make chromium (apt-get install chromium)"
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-")
        port = _free_port()
        self._proc = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                       f"--remote-debugging-port={port}", f"--user-data-dir={self._profile.name}",
                                       f"--window-size={width},{height}", "about:blank"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as resp:
                    pages = [p for p in json.load(resp) if p.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Chromium's DevTools endpoint did not answer"
            time.sleep(0.2)
        self._ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=120,
                                               suppress_origin=True)
        self._id = 0

    def call(self, method: str, **params: object) -> dict:
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == self._id:
                assert "error" not in msg, msg
                return msg.get("result", {})

    def eval(self, js: str) -> object:
        return self.call("Runtime.evaluate", expression=js, returnByValue=True)["result"].get("value")

    def wait_for(self, js: str, timeout_s: float = 120) -> object:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.eval(js)
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {js}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self._ws.close()
        finally:
            self._proc.terminate()
            self._proc.wait(20)
            self._profile.cleanup()
