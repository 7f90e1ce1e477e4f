"""Drive a real headless Chromium (Debian ``chromium``) from tests, with no Python browser package.

The browser is started with ``--remote-debugging-pipe``: it reads Chrome DevTools Protocol commands
(JSON, each terminated by a NUL byte) from file descriptor 3 and writes replies and events to file
descriptor 4. That needs no TCP port, no websocket library and no Playwright/Puppeteer download, and
lets a test do what ``chromium --screenshot`` cannot: set the exact viewport size, wait until the
page says it has drawn (a JavaScript condition), collect console errors and every URL the page
requested, then grab a screenshot.

Flags: the set /work/shared/notes/dependencies.md lists for a closed network (no first-run, no
background networking, a fresh profile), ``--disable-gpu`` (WebGL then runs on SwiftShader; checked:
``WebGL2`` is available in headless Chromium 156 with these flags; ``--enable-unsafe-swiftshader``
states the software fallback explicitly so it keeps working when Chromium removes the implicit one),
and with ``offline=True`` ``--host-resolver-rules=MAP * ~NOTFOUND`` so no host name resolves (only
the literal loopback address 127.0.0.1 stays reachable, for pages a test serves itself).
"""

from __future__ import annotations

import base64
import fcntl
import io
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium_path() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium process; use as a context manager. ``Chromium().open(url, w, h)``."""

    def __init__(self, *, offline: bool = True, extra_args: tuple[str, ...] = ()) -> None:
        exe = chromium_path()
        if exe is None:
            raise BrowserError("chromium is not installed")
        self.profile = Path(tempfile.mkdtemp(prefix="recon-chromium-"))
        args = [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
            "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions",
            "--mute-audio", "--hide-scrollbars", f"--user-data-dir={self.profile}",
            "--remote-debugging-pipe", *extra_args, "about:blank",
        ]
        if offline:
            args.insert(-1, "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
        # The pipes must be fds 3 (commands in) and 4 (messages out) in the child. Our ends are first
        # moved above 10 (close-on-exec) so the dup2 calls in the child cannot clobber one another;
        # dup2 clears close-on-exec on 3 and 4 only. Python opens every other fd close-on-exec.
        cmd_r, cmd_w = os.pipe()
        msg_r, msg_w = os.pipe()
        child_in = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(msg_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(cmd_r)
        os.close(msg_w)

        def wire_pipes() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.log_path = self.profile / "chromium.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, preexec_fn=wire_pipes, close_fds=False,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
        )
        os.close(child_in)
        os.close(child_out)
        self._out = os.fdopen(cmd_w, "wb", buffering=0)
        self._in = msg_r
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self.send("Target.setDiscoverTargets", {"discover": True})

    # --- protocol -------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._in, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            with self._cond:
                for raw in messages:
                    msg = json.loads(raw)
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, *, session: str | None = None, timeout: float = 60.0) -> dict:
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        self._out.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while msg_id not in self._replies:
                if self._closed:
                    raise BrowserError(f"chromium exited while waiting for {method}; log: {self.log_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"no reply to {method} within {timeout:.0f} s")
                self._cond.wait(left)
            reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise BrowserError(f"{method} failed: {reply['error']}")
        return reply.get("result", {})

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # --- pages ----------------------------------------------------------------------------------
    def open(self, url: str, width: int, height: int, *, wait_for: str | None = None, timeout: float = 90.0) -> "Page":
        """A new tab of exactly ``width`` x ``height`` CSS pixels (device scale 1) showing ``url``;
        when ``wait_for`` is given, returns once that JavaScript expression is truthy."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, target)
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": int(width), "height": int(height), "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        page.navigate(url)
        if wait_for is not None:
            page.wait_for(wait_for, timeout=timeout)
        return page

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("Browser.close", timeout=10)
            except BrowserError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    def __init__(self, browser: Chromium, session: str, target: str) -> None:
        self.browser = browser
        self.session = session
        self.target = target

    def send(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def _events(self, method: str) -> list[dict]:
        with self.browser._cond:
            return [e["params"] for e in self.browser.events if e.get("sessionId") == self.session and e.get("method") == method]

    def navigate(self, url: str) -> None:
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"navigation to {url} failed: {result['errorText']}")

    def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, timeout=timeout
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 90.0, poll: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(
                    f"{expression!r} still false after {timeout:.0f} s; console: {self.console_messages()[-10:]}; "
                    f"errors: {self.errors()[-5:]}"
                )
            time.sleep(poll)

    def screenshot(self, path: str | Path | None = None) -> np.ndarray:
        """The viewport as an [H, W, 3] uint8 array (also written as PNG to ``path`` when given)."""
        from PIL import Image

        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def drag(self, start: tuple[float, float], end: tuple[float, float], *, steps: int = 8, button: str = "left") -> None:
        """Press the mouse at ``start`` (CSS pixels), move to ``end`` in ``steps`` moves, release."""
        buttons = {"left": 1, "right": 2, "middle": 4}[button]
        self.send("Input.dispatchMouseEvent", {"type": "mousePressed", "x": start[0], "y": start[1], "button": button,
                                               "buttons": buttons, "clickCount": 1})
        for k in range(1, steps + 1):
            x = start[0] + (end[0] - start[0]) * k / steps
            y = start[1] + (end[1] - start[1]) * k / steps
            self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y, "button": button, "buttons": buttons})
        self.send("Input.dispatchMouseEvent", {"type": "mouseReleased", "x": end[0], "y": end[1], "button": button,
                                               "buttons": 0, "clickCount": 1})

    def press(self, key: str) -> None:
        """Type one printable character (keydown with text, then keyup)."""
        self.send("Input.dispatchKeyEvent", {"type": "keyDown", "key": key, "text": key})
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": key})

    def console_messages(self) -> list[str]:
        out = []
        for e in self._events("Runtime.consoleAPICalled"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in e.get("args", []))
            out.append(f"{e.get('type')}: {text}")
        return out

    def errors(self) -> list[str]:
        """Uncaught exceptions and console.error messages."""
        out = [
            e["exceptionDetails"].get("exception", {}).get("description") or e["exceptionDetails"].get("text", "")
            for e in self._events("Runtime.exceptionThrown")
        ]
        out += [m for m in self.console_messages() if m.startswith("error:")]
        return out

    def requested_urls(self) -> list[str]:
        """Every URL the page (and its workers) asked the network stack for, in order."""
        return [e["request"]["url"] for e in self._events("Network.requestWillBeSent")]
