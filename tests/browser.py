"""Headless Chromium driven over the Chrome DevTools Protocol, for checks of web pages in tests.

``with Browser(chromium, folder) as page:`` starts Chromium with its own profile in ``folder``;
``page.open(url, until=...)`` loads a page and waits until its text holds a string;
``page.evaluate(js)`` runs a script; ``page.text()`` is the page's visible text;
``page.screenshot(path)`` writes a PNG. The protocol runs over a WebSocket with aiohttp (already a
dependency of MLflow), so nothing more is installed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp


class Browser:
    """One Chromium process and its first tab."""

    def __init__(self, chromium: str, folder: Path, *, width: int = 1600, height: int = 1000):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.profile = Path(tempfile.mkdtemp(prefix="profile-", dir=folder))
        self.process = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--disable-dev-shm-usage", "--no-first-run", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=(folder / "chromium.log").open("w"),
        )  # fmt: skip
        self.loop = asyncio.new_event_loop()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._http: aiohttp.ClientSession | None = None
        self._next = 0

    def __enter__(self) -> Browser:
        try:
            self.loop.run_until_complete(self._connect(self._port()))
            self.call("Page.enable")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.loop.run_until_complete(self._close())
        self.loop.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def _port(self) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited; see {self.folder / 'chromium.log'}")
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    async def _connect(self, port: int) -> None:
        self._http = aiohttp.ClientSession()
        async with self._http.get(f"http://127.0.0.1:{port}/json/list") as answer:
            targets = await answer.json()
        page = next(t for t in targets if t["type"] == "page")
        self._ws = await self._http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)

    async def _close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self._ws is not None
        self._next += 1
        ident = self._next
        await self._ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads((await self._ws.receive(timeout=120)).data)
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.loop.run_until_complete(self._call(method, params))

    def evaluate(self, script: str) -> Any:
        answer = self.call("Runtime.evaluate", expression=script, returnByValue=True)
        return answer.get("result", {}).get("value")

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''"))

    def wait_for(self, words: str, timeout: float = 60.0) -> str:
        """The page's text once it holds ``words``."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if words in text:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{words!r} not on the page; it shows: {text[:2000]}")
            time.sleep(0.5)

    def open(self, url: str, *, until: str, timeout: float = 60.0) -> str:
        self.call("Page.navigate", url=url)
        return self.wait_for(until, timeout)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
