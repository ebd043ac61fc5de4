"""Client mistakes at the HTTP layer are 400s in OpenAI's error shape, counted in
`ferro_bad_requests_total{listener,reason}`, and never logged at error level."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'


def errors_logged(caplog) -> list[logging.LogRecord]:
    """Error-level records of the gateway and aiohttp's server (not of other tests' leftovers)."""
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith(("ferro_proxy", "aiohttp.server", "aiohttp.web"))
    ]


async def raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("encoding", "code"),
    [
        ("gzip", "invalid_content_encoding"),
        ("deflate", "invalid_content_encoding"),
        ("br", "bad_request_content_encoding"),
        ("zstd", "bad_request_content_encoding"),
    ],
)
async def test_a_body_that_does_not_decode_is_a_400(gateway, caplog, encoding, code) -> None:
    caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as session:
        urls = [gateway.proxy_url + "/v1/chat/completions"]
        if code.startswith("bad_request_"):  # refused by the HTTP parser, before the admin key check
            urls.append(gateway.admin_url + "/admin/config")
        for url in urls:
            async with session.post(
                url, data=BODY, headers={"Content-Encoding": encoding, "Content-Type": "application/json"}
            ) as resp:
                body = await resp.json()
            assert resp.status == 400, body
            assert body["error"]["type"] == "invalid_request_error"
            if "/v1/" in url:
                assert body["error"]["code"] == code
    assert errors_logged(caplog) == []


async def test_a_malformed_request_head_is_an_openai_shaped_400_and_counted(gateway, caplog) -> None:
    caplog.set_level(logging.INFO)
    port = int(gateway.proxy_url.rsplit(":", 1)[1])
    for raw in (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40,  # TLS sent to a plain port
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    ):
        answer = await raw_exchange(port, raw)
        assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer[:80]
        assert b'"error"' in answer and b"application/json" in answer
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.admin_url + "/metrics") as resp:
            text = await resp.text()
    counted = [
        line for line in text.splitlines() if line.startswith('ferro_bad_requests_total{listener="proxy",reason="malformed_http"}')
    ]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 3
    assert errors_logged(caplog) == []
