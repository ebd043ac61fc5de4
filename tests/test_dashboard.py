"""The dashboard in a real headless Chromium, driven over the Chrome DevTools Protocol by a
small client written here (no Playwright download is possible).

Chromium comes from Debian: `apt-get install -y chromium`. Without it the test skips
loudly (and fails under CI=true, where .ci/run must install it).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from tests.conftest import in_ci
from tests.test_admin import BOOT, Admin, admin_env

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
    "--window-size=1400,1800",
]


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        message = "chromium is not installed: run `apt-get update && apt-get install -y chromium`"
        if in_ci():
            pytest.fail(message)
        pytest.skip("SKIPPED LOUDLY: " + message)
    return found


class Page:
    """One browser tab over a CDP websocket: commands, load events, JS evaluation."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = orjson.loads(msg.data)
            future = self.pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self.events.put_nowait(data)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[msg_id] = future
        await self.ws.send_str(
            orjson.dumps({"id": msg_id, "method": method, "params": params}).decode()
        )  # CDP: text frames only
        reply = await asyncio.wait_for(future, 20)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def goto(self, url: str) -> None:
        while not self.events.empty():
            self.events.get_nowait()
        await self.send("Page.navigate", url=url)
        while True:
            event = await asyncio.wait_for(self.events.get(), 20)
            if event["method"] == "Page.loadEventFired":
                return

    async def js(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"JS failed: {expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str) -> Any:
        for _ in range(400):  # up to ~20 s on a loaded machine; returns as soon as it holds
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"the page never showed {what}: {expression}")

    async def click(self, selector: str) -> None:
        found = await self.js(
            f"(() => {{ const el = document.querySelector({orjson.dumps(selector).decode()});"
            " if (!el) return false; el.click(); return true; })()"
        )
        assert found, f"nothing to click at {selector}"

    async def type(self, selector: str, text: str) -> None:
        sel, value = orjson.dumps(selector).decode(), orjson.dumps(text).decode()
        assert await self.js(
            f"(() => {{ const el = document.querySelector({sel}); if (!el) return false;"
            f" el.value = {value}; return true; }})()"
        ), f"no input at {selector}"

    async def text(self, selector: str) -> str:
        return await self.js(
            f"(document.querySelector({orjson.dumps(selector).decode()}) || {{}}).textContent || ''"
        )

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


@pytest.fixture
async def browser(tmp_path: Path):
    binary = chromium_binary()
    profile = tmp_path / "chromium-profile"
    proc = await asyncio.create_subprocess_exec(
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    session = aiohttp.ClientSession()
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(600):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page_target = next(t for t in targets if t["type"] == "page")
        ws = await session.ws_connect(page_target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(ws)
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        yield page
        page.reader.cancel()
        await ws.close()
    finally:
        await session.close()
        proc.terminate()
        await proc.wait()


async def test_dashboard_in_chromium(gateway_factory, fake_openai, browser: Page, tmp_path: Path):
    config = {
        "plugins": [
            {
                "name": "request-logger",
                "type": "logging",
                "config": {"persist": True, "flush_interval": "10ms"},
            }
        ]
    }
    running = await gateway_factory(config, env=admin_env(fake_openai.base_url))
    admin = Admin(running.admin_url, BOOT)
    ops = await admin.create_key("ops", ["admin"])
    viewer = await admin.create_key("viewer", ["read_only"])
    app = await admin.create_key("app", ["proxy"])
    client = openai.AsyncOpenAI(api_key=app["key"], base_url=running.proxy_url + "/v1", max_retries=0)
    for _ in range(2):
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    fake_openai.script.append({"status": 500})
    with pytest.raises(openai.APIStatusError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    await admin.ok("PUT", "/admin/config", {"aliases": {"fast": "gpt-4o-mini"}})  # version 2

    async with aiohttp.ClientSession() as session, session.get(running.admin_url + "/dashboard") as resp:
        html = await resp.text()
        assert resp.status == 200 and "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert "http://" not in html and "https://" not in html  # nothing from a CDN

    await browser.goto(running.admin_url + "/dashboard")
    await browser.type("#key-input", "sk-ferro-not-a-real-key")
    await browser.click("#signin-form button")
    await browser.wait_for(
        "document.getElementById('signin-error').textContent.includes('not accepted')", "a refused sign-in"
    )

    await browser.type("#key-input", ops["key"])
    await browser.click("#signin-form button")
    await browser.wait_for("document.body.dataset.ready === '1'", "the signed-in dashboard")
    await browser.wait_for(
        "document.getElementById('t-requests').textContent === '3'", "3 requests in the tiles"
    )
    assert "ops" in await browser.text("#whoami") and "admin" in await browser.text("#whoami")
    assert await browser.text("#providers tr[data-provider='openai'] td:last-child") == "closed"
    log_rows = await browser.js("document.querySelectorAll('#logs tbody tr[data-request-id]').length")
    assert log_rows == 3 and "502" in await browser.text("#logs tbody")
    assert await browser.text("#t-errors") == "33.3 %"
    assert int(await browser.js("document.getElementById('chart-rate').dataset.points")) > 0

    # create a key from the form: its secret is shown once
    await browser.type("#new-key-name", "from-the-ui")
    await browser.click("#create-key button")
    notice = await browser.wait_for(
        "(t => t.includes('sk-ferro-') && t)(document.getElementById('notice').textContent)", "the new key"
    )
    created = next(k for k in (await admin.ok("GET", "/admin/keys"))["data"] if k["name"] == "from-the-ui")
    assert created["prefix"] in notice and created["scopes"] == ["proxy"]

    # revoke it: two clicks, then the API agrees
    row = f"#keys tr[data-key-id='{created['id']}']"
    await browser.wait_for(f'!!document.querySelector("{row} button.revoke")', "the revoke button")
    await browser.click(f"{row} button.revoke")
    assert await browser.text(f"{row} button.revoke") == "Confirm revoke"
    await browser.click(f"{row} button.revoke")
    await browser.wait_for(
        f"document.querySelector(\"{row}\").textContent.includes('revoked')", "the revoked key"
    )
    assert (await admin.ok("GET", f"/admin/keys/{created['id']}"))["status"] == "revoked"

    # config history: the diff of version 2 shows the alias added; roll back to version 1
    await browser.click("#history tr[data-version='2'] button.view")
    added = await browser.js(
        "[...document.querySelectorAll('#diff .add')].map(e => e.textContent).join('\\n')"
    )
    assert '"fast": "gpt-4o-mini"' in added
    await browser.click("#history tr[data-version='1'] button.rollback")
    await browser.click("#history tr[data-version='1'] button.rollback")
    await browser.wait_for("!!document.querySelector(\"#history tr[data-version='3']\")", "version 3")
    current = await admin.ok("GET", "/admin/config")
    assert current["version"] == 3 and current["rolled_back_from"] == 1
    assert running.gateway.config.aliases == {}

    shot = tmp_path / "dashboard.png"
    await browser.screenshot(shot)
    assert shot.stat().st_size > 10_000
    if os.environ.get("FERRO_DASHBOARD_SCREENSHOT"):
        shutil.copy(shot, os.environ["FERRO_DASHBOARD_SCREENSHOT"])

    # a read-only key sees everything but can change nothing
    await browser.click("#signout")
    await browser.type("#key-input", viewer["key"])
    await browser.click("#signin-form button")
    await browser.wait_for("document.body.dataset.ready === '1'", "the read-only dashboard")
    assert await browser.js("document.getElementById('create-key').classList.contains('hidden')")
    assert await browser.js("document.querySelectorAll('#keys button, #history button.rollback').length") == 0
    assert await browser.js("document.querySelectorAll('#keys tbody tr[data-key-id]').length") == 4
