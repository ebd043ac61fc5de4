"""The AWS credential chain for Bedrock, without botocore.

Sources, in order; the first one *configured* is used (presence is decided from variables and
settings alone, synchronously, when the provider is built):

1. static keys: `access_key_id` / `secret_access_key` / `session_token` in the provider's
   settings, else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN;
2. a Bedrock API key: the settings' `api_key`, else AWS_BEARER_TOKEN_BEDROCK, sent as
   `Authorization: Bearer <key>` instead of a SigV4 signature;
3. web identity (EKS IRSA): AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE (+ AWS_ROLE_SESSION_NAME)
   exchanged at STS `AssumeRoleWithWebIdentity` (AWS_ENDPOINT_URL_STS, AWS_STS_REGIONAL_ENDPOINTS);
4. container credentials (EKS Pod Identity, ECS task roles): AWS_CONTAINER_CREDENTIALS_RELATIVE_URI
   (under `CONTAINER_BASE`) or AWS_CONTAINER_CREDENTIALS_FULL_URI, with AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE
   or AWS_CONTAINER_AUTHORIZATION_TOKEN as the Authorization header;
5. IMDSv2 (EC2 instance profile), only when asked for: AWS_EC2_METADATA_SERVICE_ENDPOINT is set,
   or the settings say `credentials: imds`. Probing 169.254.169.254 on every start outside
   EC2 costs a connect timeout per pod, so it is never guessed. AWS_EC2_METADATA_DISABLED=true
   turns it off.

`credentials: <source>` in the settings pins one source instead of the chain.

Temporary credentials are cached and refreshed in the background before they expire (five
minutes before, or halfway through a shorter life); a request waits only when there is no
valid credential at all (the first fetch, or after expiry). One refresh runs at a time. A
failed refresh keeps the old credentials while they are valid and retries with backoff.

Every secret fetched is registered with the redaction registry before it is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from ferro_proxy import redaction
from ferro_proxy.config import ProviderSettings
from ferro_proxy.errors import GatewayError
from providers.aws_sigv4 import Credentials

log = logging.getLogger("ferro_proxy.providers.aws_credentials")

# Defaults of the link-local endpoints; tests point these (and the variables) at loopback.
CONTAINER_BASE = "http://169.254.170.2"
IMDS_ENDPOINT = "http://169.254.169.254"
IMDS_ENDPOINT_IPV6 = "http://[fd00:ec2::254]"
IMDS_TOKEN_TTL = 21600

REFRESH_BEFORE = 300.0  # refresh when less than this is left
EXPIRY_SKEW = 10.0  # treat credentials as expired this long before they are
RETRY_MIN, RETRY_MAX = 5.0, 60.0  # backoff after a failed background refresh
FAILURE_HOLD = 2.0  # with nothing valid, a failure answers the requests of the next seconds
MAX_ANSWER_BYTES = 64 * 1024
STS_VERSION = "2011-06-15"
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=3)
IMDS_TIMEOUT = aiohttp.ClientTimeout(total=5, connect=1)

SOURCES = ("static", "bearer", "web_identity", "container", "imds")
# Any one of these may enable the provider (see `configured_kind` for the exact rule).
ENABLING_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_BEARER_TOKEN_BEDROCK",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
)
CHOICES = ("auto", *SOURCES)
# Regions whose STS calls go to the global endpoint under AWS_STS_REGIONAL_ENDPOINTS=legacy.
_LEGACY_GLOBAL_REGIONS = frozenset(
    "ap-northeast-1 ap-south-1 ap-southeast-1 ap-southeast-2 aws-global ca-central-1 eu-central-1 "
    "eu-north-1 eu-west-1 eu-west-2 eu-west-3 sa-east-1 us-east-1 us-east-2 us-west-1 us-west-2".split()
)
# Plain-http container endpoints the SDKs accept besides loopback (ECS agent, EKS Pod Identity agent).
_CONTAINER_HOSTS = frozenset(
    {
        ipaddress.ip_address("169.254.170.2"),
        ipaddress.ip_address("169.254.170.23"),
        ipaddress.ip_address("fd00:ec2::23"),
    }
)


class CredentialError(Exception):
    """A source could not produce credentials; the message never holds a secret."""


@dataclass(frozen=True, slots=True)
class Expiring:
    credentials: Credentials
    expires_at: float | None  # epoch seconds; None: never expires

    def plan(self, now: float) -> tuple[float, float]:
        """(used until, refreshed at), epoch seconds. Refresh five minutes before expiry, or
        halfway through a shorter life; stop using them a little before they expire, so a
        request signed now still arrives in time."""
        if self.expires_at is None:
            return float("inf"), float("inf")
        life = max(0.0, self.expires_at - now)
        return self.expires_at - min(EXPIRY_SKEW, life / 10), self.expires_at - min(REFRESH_BEFORE, life / 2)


# ------------------------------------------------------------------ helpers


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def _register(*values: str | None) -> None:
    redaction.register_many(values)


def parse_expiration(value: Any) -> float | None:
    """ISO 8601 (`2024-05-01T12:00:00Z`, fractions or offsets allowed) as epoch seconds."""
    if not value:
        return None
    try:
        stamp = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise CredentialError(f"unreadable Expiration {str(value)[:40]!r}") from None
    if stamp.tzinfo is None:
        raise CredentialError("Expiration has no time zone")
    return stamp.timestamp()


def _read_file(path: str, what: str) -> str:
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise CredentialError(f"cannot read {what} ({type(exc).__name__})") from None
    if not text:
        raise CredentialError(f"{what} is empty")
    return text


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    data = await resp.content.read(MAX_ANSWER_BYTES + 1)
    if len(data) > MAX_ANSWER_BYTES:
        raise CredentialError("the credentials answer is too large")
    return data


def _from_json(raw: bytes, where: str, token_field: str = "Token") -> Expiring:
    """The container/IMDS answer: AccessKeyId, SecretAccessKey, Token, Expiration."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise CredentialError(f"{where} answered with something that is not JSON") from None
    if not isinstance(data, dict) or not data.get("AccessKeyId") or not data.get("SecretAccessKey"):
        raise CredentialError(f"{where} answered without AccessKeyId and SecretAccessKey")
    token = data.get(token_field) or None
    redaction.register_rotating(f"aws:{where}", str(data["SecretAccessKey"]), token)
    creds = Credentials(str(data["AccessKeyId"]), str(data["SecretAccessKey"]), token and str(token))
    return Expiring(creds, parse_expiration(data.get("Expiration")))


def _json_error(raw: bytes) -> str:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        return " ".join(str(data.get(k)) for k in ("code", "Code", "message", "Message") if data.get(k))
    return ""


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_sts_xml(raw: bytes) -> Expiring:
    """An AssumeRoleWithWebIdentity answer (or STS error document) → credentials."""
    if b"<!DOCTYPE" in raw.upper() or b"<!ENTITY" in raw.upper():
        raise CredentialError("STS answered with a document type declaration")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError:
        raise CredentialError("STS answered with something that is not XML") from None
    found: dict[str, str] = {}
    for el in root.iter():
        name = _local_name(el.tag)
        if name not in found and el.text is not None:
            found[name] = el.text.strip()
    if _local_name(root.tag) == "ErrorResponse" or "Credentials" not in {
        _local_name(e.tag) for e in root.iter()
    }:
        detail = ": ".join(v for v in (found.get("Code"), found.get("Message")) if v)
        raise CredentialError(f"STS refused AssumeRoleWithWebIdentity ({detail or 'no Credentials'})")
    access, secret = found.get("AccessKeyId"), found.get("SecretAccessKey")
    if not access or not secret:
        raise CredentialError("STS answered without AccessKeyId and SecretAccessKey")
    token = found.get("SessionToken") or None
    redaction.register_rotating("aws:sts", secret, token)
    return Expiring(Credentials(access, secret, token), parse_expiration(found.get("Expiration")))


def sts_endpoint(env: Mapping[str, str], region: str | None) -> str:
    """AWS_ENDPOINT_URL_STS, else regional `sts.<region>.amazonaws.com` (the default), else the
    global endpoint under AWS_STS_REGIONAL_ENDPOINTS=legacy for the legacy global regions."""
    override = (env.get("AWS_ENDPOINT_URL_STS") or "").strip()
    if override:
        return override.rstrip("/") + "/"
    mode = (env.get("AWS_STS_REGIONAL_ENDPOINTS") or "regional").strip().lower()
    if not region or (mode == "legacy" and region in _LEGACY_GLOBAL_REGIONS):
        return "https://sts.amazonaws.com/"
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://sts.{region}.{domain}/"


def check_container_url(url: str) -> None:
    """The SDKs' rule for AWS_CONTAINER_CREDENTIALS_FULL_URI: https to any host, plain http only
    to loopback or the ECS / EKS Pod Identity agent addresses (IP literals or `localhost`)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    if parts.hostname == "localhost":
        return
    try:
        ip = ipaddress.ip_address(parts.hostname)
    except ValueError:
        raise ValueError("an http:// URL must name a loopback or container-agent IP address") from None
    if not (ip.is_loopback or ip in _CONTAINER_HOSTS):
        raise ValueError("an http:// URL must name a loopback or container-agent IP address")


# ------------------------------------------------------------------ sources


class Source:
    kind = ""

    async def fetch(self, session: aiohttp.ClientSession) -> Expiring:
        raise NotImplementedError


class StaticSource(Source):
    kind = "static"

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    async def fetch(self, session: aiohttp.ClientSession) -> Expiring:
        return Expiring(self.credentials, None)


class WebIdentitySource(Source):
    kind = "web_identity"

    def __init__(self, role_arn: str, token_file: str, session_name: str, endpoint: str) -> None:
        self.role_arn, self.token_file, self.session_name, self.endpoint = (
            role_arn,
            token_file,
            session_name,
            endpoint,
        )

    async def fetch(self, session: aiohttp.ClientSession) -> Expiring:
        token = _read_file(
            self.token_file, "the web identity token file"
        )  # rotated by kubelet: read each time
        redaction.register_rotating("aws:web_identity_token", token)
        form = {
            "Action": "AssumeRoleWithWebIdentity",
            "Version": STS_VERSION,
            "RoleArn": self.role_arn,
            "RoleSessionName": self.session_name,
            "WebIdentityToken": token,
        }
        # Unsigned: the web identity token is the proof.
        try:
            async with session.post(
                self.endpoint, data=form, headers={"Accept": "text/xml"}, timeout=FETCH_TIMEOUT
            ) as resp:
                raw = await _read_capped(resp)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise CredentialError(f"STS could not be reached ({type(exc).__name__})") from None
        return parse_sts_xml(raw)


class ContainerSource(Source):
    kind = "container"

    def __init__(self, url: str, token: str | None, token_file: str | None) -> None:
        self.url, self.token, self.token_file = url, token, token_file

    def _authorization(self) -> str | None:
        if self.token_file:  # the Pod Identity token is rotated: read it each time
            return _read_file(self.token_file, "the container authorization token file")
        return self.token

    async def fetch(self, session: aiohttp.ClientSession) -> Expiring:
        auth = self._authorization()
        redaction.register_rotating("aws:container_authorization", auth)
        headers = {"Accept": "application/json", **({"Authorization": auth} if auth else {})}
        try:
            async with session.get(self.url, headers=headers, timeout=FETCH_TIMEOUT) as resp:
                raw = await _read_capped(resp)
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise CredentialError(
                f"the container credentials endpoint could not be reached ({type(exc).__name__})"
            ) from None
        if status != 200:
            raise CredentialError(
                f"the container credentials endpoint answered {status} {_json_error(raw)}".strip()
            )
        return _from_json(raw, "the container credentials endpoint")


class ImdsSource(Source):
    kind = "imds"

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint.rstrip("/")

    async def _call(
        self, session: aiohttp.ClientSession, method: str, path: str, headers: dict[str, str]
    ) -> bytes:
        try:
            async with session.request(
                method, self.endpoint + path, headers=headers, timeout=IMDS_TIMEOUT, allow_redirects=False
            ) as resp:
                raw = await _read_capped(resp)
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise CredentialError(
                f"the instance metadata service could not be reached ({type(exc).__name__})"
            ) from None
        if status != 200:
            raise CredentialError(f"the instance metadata service answered {status} to {method} {path}")
        return raw

    async def fetch(self, session: aiohttp.ClientSession) -> Expiring:
        token = (
            (
                await self._call(
                    session,
                    "PUT",
                    "/latest/api/token",
                    {"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL)},
                )
            )
            .decode("utf-8", "replace")
            .strip()
        )
        if not token:
            raise CredentialError("the instance metadata service gave no session token")
        redaction.register_rotating("aws:imds_token", token)
        auth = {"X-aws-ec2-metadata-token": token}
        base = "/latest/meta-data/iam/security-credentials/"
        roles = (await self._call(session, "GET", base, auth)).decode("utf-8", "replace").split()
        if not roles:
            raise CredentialError("the instance has no IAM role (no instance profile)")
        raw = await self._call(session, "GET", base + roles[0], auth)
        try:
            code = orjson.loads(raw).get("Code", "Success")
        except (orjson.JSONDecodeError, AttributeError):
            code = "Success"  # let _from_json name the problem
        if code != "Success":
            raise CredentialError(f"the instance metadata service reports {str(code)[:60]}")
        return _from_json(raw, "the instance metadata service")


@dataclass(frozen=True, slots=True)
class BearerToken:
    """A Bedrock API key: `Authorization: Bearer <token>`, no signature."""

    token: str
    kind = "bearer"


# ------------------------------------------------------------------ choosing a source


def _static(env: Mapping[str, str], cfg: ProviderSettings) -> Credentials | None:
    access = cfg.access_key_id or env.get("AWS_ACCESS_KEY_ID")
    secret = cfg.secret_access_key or env.get("AWS_SECRET_ACCESS_KEY")
    token = cfg.session_token or env.get("AWS_SESSION_TOKEN") or None
    return Credentials(access, secret, token) if access and secret else None


def _bearer(env: Mapping[str, str], cfg: ProviderSettings) -> str | None:
    return cfg.api_key or env.get("AWS_BEARER_TOKEN_BEDROCK") or None


def _web_identity_set(env: Mapping[str, str]) -> bool:
    return bool(env.get("AWS_ROLE_ARN") and env.get("AWS_WEB_IDENTITY_TOKEN_FILE"))


def _container_set(env: Mapping[str, str]) -> bool:
    return bool(
        env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    )


def configured_kind(env: Mapping[str, str], cfg: ProviderSettings | None = None) -> str | None:
    """Which source the chain would use, from variables and settings only (no I/O)."""
    cfg = cfg or ProviderSettings()
    pinned = (cfg.credentials or "auto").strip().lower()
    if pinned != "auto":
        return pinned
    if _static(env, cfg) is not None:
        return "static"
    if _bearer(env, cfg):
        return "bearer"
    if _web_identity_set(env):
        return "web_identity"
    if _container_set(env):
        return "container"
    if env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") and not _truthy(env.get("AWS_EC2_METADATA_DISABLED")):
        return "imds"
    return None


def select(
    env: Mapping[str, str], cfg: ProviderSettings, region: str | None, *, setting: str = "providers.bedrock"
) -> Source | BearerToken | None:
    """The source to use, or None when nothing is configured. ValueError (its message names the
    setting or variable) when the configuration is wrong."""
    kind = configured_kind(env, cfg)
    if kind is None:
        return None
    if kind not in SOURCES:
        raise ValueError(f"{setting}.credentials: must be one of {', '.join(CHOICES)}, not {kind!r}")
    if kind == "static":
        static = _static(env, cfg)
        if static is None:
            raise ValueError(
                f"{setting}.credentials: static needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        _register(static.secret_access_key, static.session_token)
        return StaticSource(static)
    if kind == "bearer":
        token = _bearer(env, cfg)
        if not token:
            raise ValueError(f"{setting}.credentials: bearer needs AWS_BEARER_TOKEN_BEDROCK or api_key")
        _register(token)
        return BearerToken(token)
    if kind == "web_identity":
        if not _web_identity_set(env):
            raise ValueError(
                f"{setting}.credentials: web_identity needs AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE"
            )
        name = (env.get("AWS_ROLE_SESSION_NAME") or "").strip() or f"ferro-proxy-{int(time.time())}"
        return WebIdentitySource(
            env["AWS_ROLE_ARN"], env["AWS_WEB_IDENTITY_TOKEN_FILE"], name, sts_endpoint(env, region)
        )
    if kind == "container":
        return _container_source(env, setting)
    if _truthy(env.get("AWS_EC2_METADATA_DISABLED")):
        raise ValueError(f"{setting}.credentials: imds, but AWS_EC2_METADATA_DISABLED is true")
    endpoint = env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or (
        IMDS_ENDPOINT_IPV6
        if (env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE") or "").lower() == "ipv6"
        else IMDS_ENDPOINT
    )
    return ImdsSource(endpoint)


def _container_source(env: Mapping[str, str], setting: str) -> ContainerSource:
    relative = env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    if relative:
        url = CONTAINER_BASE.rstrip("/") + "/" + relative.lstrip("/")
    else:
        url = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or ""
        if not url:
            raise ValueError(
                f"{setting}.credentials: container needs AWS_CONTAINER_CREDENTIALS_RELATIVE_URI "
                "or AWS_CONTAINER_CREDENTIALS_FULL_URI"
            )
        try:
            check_container_url(url)
        except ValueError as exc:
            raise ValueError(f"AWS_CONTAINER_CREDENTIALS_FULL_URI: {exc}") from None
    token = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN") or None
    _register(token)
    return ContainerSource(url, token, env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") or None)


# ------------------------------------------------------------------ the cache


class CredentialCache:
    """Credentials from one source, fetched once and refreshed ahead of expiry in the background."""

    def __init__(self, source: Source, session: Callable[[], aiohttp.ClientSession], provider: str) -> None:
        self.source = source
        self._session = session
        self.provider = provider
        self.current: Expiring | None = None
        self._usable_until = 0.0
        self.refreshes = 0  # successful fetches, for health and tests
        self._inflight: asyncio.Task[Expiring] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._failures = 0
        self._refresh_at = float("inf")  # epoch seconds when the next refresh is due
        self._failed: tuple[float, str] | None = None  # (monotonic time, message) of the last failure
        self._closed = False
        if isinstance(source, StaticSource):
            self.current, self._usable_until = Expiring(source.credentials, None), float("inf")

    def _valid(self, now: float) -> bool:
        return self.current is not None and now < self._usable_until

    def start(self) -> None:
        """Begin the first fetch now, so the first request finds credentials ready."""
        if self.current is None and not self._closed:
            self._refresh_soon()

    async def get(self) -> Credentials:
        now = time.time()
        current = self.current
        if current is not None and self._valid(now):
            if now >= self._refresh_at and (self._inflight is None or self._inflight.done()):
                self._refresh_soon()  # the timer is late (a suspended host): refresh, do not wait
            return current.credentials
        failed = self._failed
        if failed is not None and time.monotonic() - failed[0] < FAILURE_HOLD:
            raise self._error(failed[1])  # spare the endpoint a retry per request while it is down
        try:
            fresh = await asyncio.shield(self._refresh_soon())
        except CredentialError as exc:
            raise self._error(str(exc)) from None
        return fresh.credentials

    def _refresh_soon(self) -> asyncio.Task[Expiring]:
        """The refresh in flight, or a new one: never two at once."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._refresh())
            self._inflight.add_done_callback(_consume)
        return self._inflight

    async def _refresh(self) -> Expiring:
        try:
            try:
                fresh = await self.source.fetch(self._session())
            except ValueError as exc:  # a URL yarl refuses
                raise CredentialError(f"bad endpoint URL ({exc})") from None
        except CredentialError as exc:
            self._failures += 1
            self._failed = (time.monotonic(), str(exc))
            still_valid = self._valid(time.time())
            log.warning(
                "%s: refreshing AWS credentials from %s failed%s: %s",
                self.provider,
                self.source.kind,
                " (the current ones stay in use until they expire)" if still_valid else "",
                exc,
            )
            if still_valid:
                self._schedule(min(RETRY_MAX, RETRY_MIN * 2 ** (self._failures - 1)))
            raise
        self._failures, self._failed = 0, None
        now = time.time()
        self.current = fresh
        self._usable_until, refresh_at = fresh.plan(now)
        self.refreshes += 1
        if refresh_at == float("inf"):
            self._refresh_at = refresh_at
        else:  # jittered, so the pods of one deployment do not all call STS in the same second
            self._schedule(max(1.0, (refresh_at - now) * random.uniform(0.95, 1.0)))
        return fresh

    def _schedule(self, delay: float) -> None:
        if self._closed:
            return
        self._refresh_at = time.time() + delay
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self._refresh_soon)

    def _error(self, message: str) -> GatewayError:
        return GatewayError(
            502,
            f"{self.provider}: no AWS credentials from {self.source.kind}: {message}",
            code="upstream_auth_error",
            type="api_error",
            provider=self.provider,
        )

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, CredentialError):
                await task


def _consume(task: asyncio.Task[Any]) -> None:
    """A background refresh's failure is logged already; keep asyncio from reporting it again."""
    if not task.cancelled():
        task.exception()
