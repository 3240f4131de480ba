"""A headless Chromium (Debian's ``chromium``) driven over the DevTools protocol with the
``websockets`` client: navigate, evaluate JavaScript, wait for a condition, take a screenshot."""

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class Browser:
    """One headless browser with one page; use as a context manager."""

    def __init__(self, profile: Path, width=1200, height=1400, gpu_flags=("--disable-gpu",)):
        # gpu_flags: WebGL2 (OHIF's cornerstone) needs SwiftShader headless instead of no GPU at all:
        # ("--use-angle=swiftshader", "--enable-unsafe-swiftshader").
        self.profile, self.size, self.gpu_flags = profile, (width, height), tuple(gpu_flags)
        self._ids = itertools.count(1)

    def __enter__(self):
        from websockets.sync.client import connect

        self.process = subprocess.Popen(
            [chromium_path(), "--headless=new", "--no-sandbox", *self.gpu_flags, "--no-first-run",
             "--disable-extensions", "--disable-background-networking", f"--user-data-dir={self.profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = self.profile / "DevToolsActivePort", time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.__exit__(None, None, None)
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        self._connection = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.socket = self._connection.__enter__()
        self.call("Page.enable")
        return self

    def __exit__(self, *exc):
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def call(self, method: str, **params) -> dict:
        ident = next(self._ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def wait_for(self, expression: str, timeout=20.0):
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}; page: {self.evaluate('location.href')}")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path
