"""Helpers for the interception tests: CA bundles, an unrelated TLS server on loopback (its
own CA), raw CONNECT exchanges, and running an official SDK in a subprocess with the
standard proxy environment (HTTPS_PROXY, SSL_CERT_FILE)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import sys
from pathlib import Path
from typing import Any

import certifi
import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ferro_proxy.intercept.ca import create_ca


def bundle_with(ca_pem: bytes, directory: Path) -> Path:
    """The system/certifi roots plus `ca_pem`: what the chart mounts for apps."""
    path = directory / "bundle.pem"
    path.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + ca_pem)
    return path


def client_context(ca_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    return ctx


class LocalTLSServer:
    """An HTTPS server on 127.0.0.1 with a certificate from its own, unrelated CA."""

    def __init__(self) -> None:
        ca_cert_pem, ca_key_pem = create_ca("unrelated test CA")
        self.ca_pem = ca_cert_pem
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
        ca_key = serialization.load_pem_private_key(ca_key_pem, None)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self._pem = cert.public_bytes(serialization.Encoding.PEM)
        self._key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.hits = 0

    async def start(self, directory: Path) -> LocalTLSServer:
        (directory / "srv.pem").write_bytes(self._pem)
        (directory / "srv-key.pem").write_bytes(self._key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(directory / "srv.pem", directory / "srv-key.pem")

        async def hello(request: web.Request) -> web.Response:
            self.hits += 1
            return web.Response(text="hello from the unrelated server")

        app = web.Application()
        app.router.add_get("/", hello)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def raw_connect(
    proxy_port: int, head: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, bytes]:
    """Send a raw head to the proxy; (reader, writer, status, body read up to Content-Length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    writer.write(head)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    status = int(status_line.split()[1]) if status_line else 0
    length = 0
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
    return reader, writer, status, body


def error_of(body: bytes) -> dict[str, Any]:
    return orjson.loads(body)["error"]


async def run_sdk(code: str, proxy_url: str, bundle: Path, extra_env: dict[str, str] | None = None) -> Any:
    """Run `code` (which prints one JSON document) with the standard proxy environment."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
        "HTTPS_PROXY": proxy_url,
        "SSL_CERT_FILE": str(bundle),
        "REQUESTS_CA_BUNDLE": str(bundle),
        **(extra_env or {}),
    }
    for name in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        env.pop(name, None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    return orjson.loads(out.splitlines()[-1])
