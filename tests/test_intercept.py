"""Legacy-app interception with the official SDKs left at their default base URLs: only
HTTPS_PROXY and SSL_CERT_FILE point them at the gateway. The fake upstreams on loopback see
the requests after the filters ran; the CA is created once, kept, exported and reused."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from ferro_proxy.config import ConfigError, config_from_data
from ferro_proxy.intercept.ca import BUNDLE_FILE, CA_CERT_FILE, CA_KEY_FILE, create_ca
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.intercept_tools import bundle_with, client_context, run_sdk

EMAIL = "jane.doe@example.com"

OPENAI_APP = f"""
import json, openai
client = openai.OpenAI(api_key="sk-app-own-openai-key", max_retries=0)
assert str(client.base_url) == "https://api.openai.com/v1/"
plain = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{{"role": "user", "content": "mail {EMAIL} please"}}]
)
parts = []
for chunk in client.chat.completions.create(
    model="gpt-4o-mini", messages=[{{"role": "user", "content": "stream to {EMAIL}"}}], stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
print(json.dumps({{"plain": plain.choices[0].message.content, "streamed": "".join(parts)}}))
"""

ANTHROPIC_APP = f"""
import json, anthropic
client = anthropic.Anthropic(api_key="sk-ant-app-own-key", max_retries=0)
assert str(client.base_url).rstrip("/") == "https://api.anthropic.com"
msg = client.messages.create(
    model="claude-sonnet-4-20250514", max_tokens=64,
    messages=[{{"role": "user", "content": "mail {EMAIL} please"}}],
)
with client.messages.stream(
    model="claude-sonnet-4-20250514", max_tokens=64,
    messages=[{{"role": "user", "content": "stream to {EMAIL}"}}],
) as stream:
    streamed = "".join(stream.text_stream)
print(json.dumps({{"plain": msg.content[0].text, "streamed": streamed, "stop": msg.stop_reason}}))
"""


def _config(ca_dir: Path, providers: dict, **intercept) -> dict:
    return {
        "plugins": [{"name": "pii-redact"}],
        "providers": providers,
        "intercept": {"enabled": True, "ca_dir": str(ca_dir), **intercept},
    }


async def _metric(running, name: str) -> list[str]:
    async with aiohttp.ClientSession() as s, s.get(running.admin_url + "/metrics") as resp:
        text = await resp.text()
    return [line for line in text.splitlines() if line.startswith(name + "{")]


async def test_openai_sdk_at_its_default_url_goes_through_the_filters(
    gateway_factory, fake_openai, tmp_path, caplog
) -> None:
    caplog.set_level("INFO", logger="ferro_proxy.access")
    gw = await gateway_factory(_config(tmp_path / "ca", {"openai": {"base_url": fake_openai.base_url}}))
    bundle = bundle_with((tmp_path / "ca" / CA_CERT_FILE).read_bytes(), tmp_path)

    out = await run_sdk(OPENAI_APP, gw.proxy_url, bundle)

    assert out == {"plain": fake_openai.reply_text, "streamed": fake_openai.reply_text}
    assert [r.path for r in fake_openai.requests] == ["/v1/chat/completions"] * 2
    sent = [r.body["messages"][-1]["content"] for r in fake_openai.requests]
    assert sent == ["mail [EMAIL] please", "stream to [EMAIL]"]  # pii-redact ran first
    # No key configured on the gateway: the app's own key travels as a bring-your-own key.
    assert fake_openai.requests[0].headers["Authorization"] == "Bearer sk-app-own-openai-key"
    lines = await _metric(gw, "ferro_intercept_requests_total")
    assert (
        'ferro_intercept_requests_total{host="api.openai.com",ingress="intercept",status="200"} 2.0' in lines
    )
    access = [getattr(r, "fields", {}) for r in caplog.records if r.name == "ferro_proxy.access"]
    assert [a["ingress"] for a in access] == ["intercept", "intercept"]
    assert all("sk-app-own" not in r.getMessage() + str(getattr(r, "fields", "")) for r in caplog.records)


async def test_anthropic_sdk_at_its_default_url_goes_through_the_filters(gateway_factory, tmp_path) -> None:
    fake = await FakeAnthropic().start()
    try:
        gw = await gateway_factory(_config(tmp_path / "ca", {"anthropic": {"base_url": fake.host_url}}))
        bundle = bundle_with((tmp_path / "ca" / CA_CERT_FILE).read_bytes(), tmp_path)

        out = await run_sdk(ANTHROPIC_APP, gw.proxy_url, bundle)

        assert out == {"plain": fake.reply_text, "streamed": fake.reply_text, "stop": "end_turn"}
        assert [r.path for r in fake.requests] == ["/v1/messages"] * 2
        bodies = [orjson.dumps(r.body).decode() for r in fake.requests]
        assert all("[EMAIL]" in b and EMAIL not in b for b in bodies)
        assert fake.requests[0].headers["x-api-key"] == "sk-ant-app-own-key"
        lines = await _metric(gw, "ferro_intercept_requests_total")
        assert any('host="api.anthropic.com"' in line and line.endswith(" 2.0") for line in lines)
    finally:
        await fake.stop()


async def test_replace_credentials_swaps_the_apps_key_for_the_configured_one(
    gateway_factory, fake_openai, tmp_path
) -> None:
    providers = {"openai": {"base_url": fake_openai.base_url, "api_key": "sk-gateway-configured"}}
    gw = await gateway_factory(_config(tmp_path / "ca", providers, replace_credentials=True))
    ca_pem = (tmp_path / "ca" / CA_CERT_FILE).read_bytes()
    async with aiohttp.ClientSession() as s:
        async with s.post(
            "https://api.openai.com/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer sk-app-secret-key"},
            proxy=gw.proxy_url,
            ssl=client_context(ca_pem),
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["choices"][0]["message"]["content"] == fake_openai.reply_text
    assert fake_openai.requests[-1].headers["Authorization"] == "Bearer sk-gateway-configured"


async def test_a_host_whose_provider_is_not_enabled_gets_a_clear_error(
    gateway_factory, fake_openai, tmp_path
) -> None:
    gw = await gateway_factory(_config(tmp_path / "ca", {"openai": {"base_url": fake_openai.base_url}}))
    ca_pem = (tmp_path / "ca" / CA_CERT_FILE).read_bytes()
    async with aiohttp.ClientSession() as s:
        async with s.post(
            "https://api.mistral.ai/v1/chat/completions",
            json={"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]},
            proxy=gw.proxy_url,
            ssl=client_context(ca_pem),
        ) as resp:
            assert resp.status == 502
            error = (await resp.json())["error"]
    assert error["code"] == "provider_not_enabled"
    assert "providers.mistral" in error["message"]
    assert fake_openai.requests == []  # never routed to another provider behind the app's back


async def test_ca_is_created_once_kept_private_and_exported(gateway_factory, fake_openai, tmp_path) -> None:
    ca_dir = tmp_path / "ca"
    gw = await gateway_factory(_config(ca_dir, {"openai": {"base_url": fake_openai.base_url}}))
    assert stat.S_IMODE(os.stat(ca_dir / CA_KEY_FILE).st_mode) == 0o600
    async with aiohttp.ClientSession() as s, s.get(gw.admin_url + "/ca.pem") as resp:
        assert resp.status == 200
        exported = await resp.read()
    assert exported == (ca_dir / CA_CERT_FILE).read_bytes()
    assert b"PRIVATE KEY" not in exported
    bundle = (ca_dir / BUNDLE_FILE).read_bytes()
    assert bundle.endswith(exported) and bundle.count(b"BEGIN CERTIFICATE") > 10  # system roots too
    await gw.drain_and_stop(0.1)

    again = await gateway_factory(_config(ca_dir, {"openai": {"base_url": fake_openai.base_url}}))
    async with aiohttp.ClientSession() as s, s.get(again.admin_url + "/ca.pem") as resp:
        assert await resp.read() == exported  # the same CA after a restart: apps keep trusting it


async def test_ca_from_secret_files_and_a_mismatched_pair(gateway_factory, fake_openai, tmp_path) -> None:
    cert, key = create_ca("from a Secret")
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    intercept = {"ca_cert": str(tmp_path / "tls.crt"), "ca_key": str(tmp_path / "tls.key")}
    gw = await gateway_factory(
        _config(tmp_path / "unused", {"openai": {"base_url": fake_openai.base_url}}, **intercept)
    )
    async with aiohttp.ClientSession() as s, s.get(gw.admin_url + "/ca.pem") as resp:
        assert await resp.read() == cert
    assert not (tmp_path / "unused" / CA_KEY_FILE).exists()  # nothing generated next to it
    assert (tmp_path / "unused" / BUNDLE_FILE).read_bytes().endswith(cert)  # roots + this CA

    _, other_key = create_ca("another")
    (tmp_path / "other.key").write_bytes(other_key)
    intercept["ca_key"] = str(tmp_path / "other.key")
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        await gateway_factory(_config(tmp_path / "unused", {}, **intercept))


async def test_interception_is_off_unless_enabled(gateway_factory, fake_openai, tmp_path) -> None:
    gw = await gateway_factory(
        config_from_data({"providers": {"openai": {"base_url": fake_openai.base_url}}}, env={})
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.admin_url + "/ca.pem") as resp:
            assert resp.status == 404
        with pytest.raises(aiohttp.ClientError):
            async with s.post(
                "https://api.openai.com/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                proxy=gw.proxy_url,
            ):
                pass
    assert fake_openai.requests == []


async def test_ca_cli_init_and_export(tmp_path) -> None:
    import asyncio

    ca_dir = tmp_path / "cli-ca"

    async def cli(*args: str) -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ferro_proxy",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        return proc.returncode or 0, out, err

    code, out, _ = await cli("ca", "init", "--ca-dir", str(ca_dir))
    assert code == 0 and str(ca_dir) in out.decode()
    assert stat.S_IMODE(os.stat(ca_dir / CA_KEY_FILE).st_mode) == 0o600
    code, _, err = await cli("ca", "init", "--ca-dir", str(ca_dir))
    assert code == 1 and b"already holds a CA" in err
    code, out, _ = await cli("ca", "export", "--ca-dir", str(ca_dir))
    assert code == 0 and out == (ca_dir / CA_CERT_FILE).read_bytes()
