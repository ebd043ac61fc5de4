"""AWS Signature Version 4 request signing (header form), with session tokens.

Written here rather than taken from botocore: the algorithm is a few HMACs over a
canonical request, botocore would add ~80 MB of install and a slow import for four
functions, and the AWS test-suite vectors in tests/test_sigv4.py pin every step.

Canonical URI: services other than S3 URI-encode the path *as sent* once more (so `%3A`
on the wire is signed as `%253A`); this is how Bedrock model ids with `:` must be signed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_UNRESERVED = "-_.~"


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never print the secret
        return f"Credentials(access_key_id={self.access_key_id[:4]}…)"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """kSigning = HMAC chain over date (YYYYMMDD), region, service and "aws4_request"."""
    k_date = _hmac(("AWS4" + secret).encode(), date)
    k_region = _hmac(k_date, region)
    k_service = _hmac(k_region, service)
    return _hmac(k_service, "aws4_request")


def uri_encode(value: str, *, keep_slash: bool = False) -> str:
    """RFC 3986 encoding as SigV4 wants it: unreserved characters stay, the rest is %XX."""
    return quote(value, safe=_UNRESERVED + ("/" if keep_slash else ""))


def canonical_uri(path: str) -> str:
    """The path URI-encoded once, slashes kept. Given the path as sent on the wire this is
    the non-S3 "encode twice" rule; given a raw path (the test suite) it is encode once."""
    return uri_encode(path, keep_slash=True) if path else "/"


def canonical_query(query: str) -> str:
    """Parameters sorted by encoded name then value; each name and value URI-encoded."""
    if not query:
        return ""
    pairs: list[tuple[str, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((uri_encode(unquote(name)), uri_encode(unquote(value))))
    pairs.sort()
    return "&".join(f"{n}={v}" for n, v in pairs)


def _canonical_value(value: str) -> str:
    return " ".join(value.strip().split())


def canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """(canonical header block, signed header list) from the headers to sign."""
    merged: dict[str, list[str]] = {}
    for name, value in headers.items():
        merged.setdefault(name.lower().strip(), []).append(_canonical_value(value))
    names = sorted(merged)
    block = "".join(f"{n}:{','.join(merged[n])}\n" for n in names)
    return block, ";".join(names)


def amz_date(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True, slots=True)
class Signed:
    headers: dict[str, str]  # the headers to add to the request (X-Amz-Date, Authorization, ...)
    canonical_request: str
    string_to_sign: str
    signature: str


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    payload: bytes,
    credentials: Credentials,
    region: str,
    service: str,
    *,
    now: datetime | None = None,
    payload_hash: str | None = None,
) -> Signed:
    """Sign a request. `headers` are the ones that will be sent (Host is derived from `url`
    when absent); the returned headers must be added to the request as they are."""
    parts = urlsplit(url)
    stamp = amz_date(now)
    to_sign: dict[str, str] = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    if not any(k.lower() == "host" for k in to_sign):
        to_sign["host"] = parts.netloc
    to_sign["x-amz-date"] = stamp
    if credentials.session_token:
        to_sign["x-amz-security-token"] = credentials.session_token
    header_block, signed_headers = canonical_headers(to_sign)
    body_hash = payload_hash or hashlib.sha256(payload).hexdigest()
    canonical_request = "\n".join(
        (
            method.upper(),
            canonical_uri(parts.path),
            canonical_query(parts.query),
            header_block,
            signed_headers,
            body_hash,
        )
    )
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        (ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest())
    )
    key = signing_key(credentials.secret_access_key, stamp[:8], region, service)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    out = {
        "X-Amz-Date": stamp,
        "Authorization": (
            f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        ),
    }
    if credentials.session_token:
        out["X-Amz-Security-Token"] = credentials.session_token
    return Signed(out, canonical_request, string_to_sign, signature)
