"""Fakes of the places an AWS pod gets its credentials from, on loopback:

- `FakeSTS`: the STS Query API's `AssumeRoleWithWebIdentity` (form-encoded POST, unsigned),
  answering the documented XML (`AssumeRoleWithWebIdentityResponse` / `ErrorResponse`);
- `FakeContainerCredentials`: the ECS agent / EKS Pod Identity agent endpoint (GET, the
  `Authorization` header must be the token), answering AccessKeyId/SecretAccessKey/Token/Expiration;
- `FakeIMDS`: IMDSv2 — `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
  gives a session token; every GET without that token in `X-aws-ec2-metadata-token` is 401.

Each issues a fresh credential set per call (`issued`) and calls `on_issue` with it, so a test
can point the fake Bedrock at the credentials just handed out. `lifetime` sets Expiration.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from tests.fakes.loopback_server import LoopbackServer

STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"


@dataclass(frozen=True)
class Issued:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: str


def _expiration(lifetime: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=lifetime)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Fake(LoopbackServer):
    lifetime: float = 3600.0
    on_issue: Callable[[Issued], None] | None = None
    issued: list[Issued] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0  # answer this many calls with a server error
    delay: float = 0.0

    def issue(self, prefix: str) -> Issued:
        n = len(self.issued) + 1
        creds = Issued(
            f"{prefix}{n:016d}"[:20],
            f"fake-secret-{n}-{secrets.token_hex(12)}",
            f"FwoGZXIvYXdzE{n}{secrets.token_hex(40)}",
            _expiration(self.lifetime),
        )
        self.issued.append(creds)
        if self.on_issue is not None:
            self.on_issue(creds)
        return creds

    async def _pace(self) -> web.Response | None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=503, text="unavailable")
        return None


@dataclass
class FakeSTS(_Fake):
    role_arn: str = "arn:aws:iam::111122223333:role/ferro-bedrock"
    web_identity_token: str = ""  # the token the caller must present (the projected SA token)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/", self.handle)

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        body = (
            f'<ErrorResponse xmlns="{STS_NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
            f"<Message>{message}</Message></Error><RequestId>fake-request</RequestId></ErrorResponse>"
        )
        return web.Response(status=status, text=body, content_type="text/xml")

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.requests.append({"form": form, "headers": dict(request.headers)})
        paced = await self._pace()
        if paced is not None:
            return paced
        if form.get("Action") != "AssumeRoleWithWebIdentity" or form.get("Version") != "2011-06-15":
            return self._error(400, "InvalidAction", "Could not find operation")
        if "Authorization" in request.headers:  # the call is unsigned; a signature means confusion
            return self._error(400, "InvalidParameterValue", "AssumeRoleWithWebIdentity is not signed")
        for name in ("RoleArn", "RoleSessionName", "WebIdentityToken"):
            if not form.get(name):
                return self._error(400, "MissingParameter", f"{name} is required")
        if form["RoleArn"] != self.role_arn:
            return self._error(403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
        if form["WebIdentityToken"] != self.web_identity_token:
            return self._error(400, "InvalidIdentityToken", "Couldn't retrieve verification key")
        c = self.issue("ASIA")
        body = (
            f'<AssumeRoleWithWebIdentityResponse xmlns="{STS_NS}"><AssumeRoleWithWebIdentityResult>'
            "<SubjectFromWebIdentityToken>system:serviceaccount:shop:shop</SubjectFromWebIdentityToken>"
            "<Audience>sts.amazonaws.com</Audience>"
            f"<AssumedRoleUser><Arn>{self.role_arn}/{form['RoleSessionName']}</Arn>"
            "<AssumedRoleId>AROAEXAMPLE:s</AssumedRoleId></AssumedRoleUser>"
            f"<Credentials><SessionToken>{c.session_token}</SessionToken>"
            f"<SecretAccessKey>{c.secret_access_key}</SecretAccessKey>"
            f"<Expiration>{c.expiration}</Expiration><AccessKeyId>{c.access_key_id}</AccessKeyId></Credentials>"
            "<Provider>arn:aws:iam::111122223333:oidc-provider/oidc.eks.example</Provider>"
            "</AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>fake-request</RequestId>"
            "</ResponseMetadata></AssumeRoleWithWebIdentityResponse>"
        )
        return web.Response(text=body, content_type="text/xml")


@dataclass
class FakeContainerCredentials(_Fake):
    path: str = "/v1/credentials"
    authorization: str | None = None  # the Authorization value the caller must send

    def routes(self, app: web.Application) -> None:
        app.router.add_get(self.path, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append({"path": request.path_qs, "headers": dict(request.headers)})
        paced = await self._pace()
        if paced is not None:
            return paced
        if self.authorization is not None and request.headers.get("Authorization") != self.authorization:
            return web.json_response({"code": "AccessDeniedException", "message": "bad token"}, status=403)
        c = self.issue("ASIA")
        return web.json_response(
            {
                "AccessKeyId": c.access_key_id,
                "SecretAccessKey": c.secret_access_key,
                "Token": c.session_token,
                "AccountId": "111122223333",
                "Expiration": c.expiration,
            }
        )


@dataclass
class FakeIMDS(_Fake):
    role: str = "ferro-node-role"
    tokens: set[str] = field(default_factory=set)

    def routes(self, app: web.Application) -> None:
        app.router.add_put("/latest/api/token", self.token)
        app.router.add_get("/latest/meta-data/iam/security-credentials/", self.roles)
        app.router.add_get("/latest/meta-data/iam/security-credentials/{role}", self.credentials)

    async def token(self, request: web.Request) -> web.Response:
        self.requests.append({"method": "PUT", "path": request.path, "headers": dict(request.headers)})
        ttl = request.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return web.Response(status=400, text="Missing or invalid TTL")
        if "X-Forwarded-For" in request.headers:  # IMDS refuses tokens to proxied requests
            return web.Response(status=403, text="Forbidden")
        value = "AQAEA" + secrets.token_urlsafe(32)
        self.tokens.add(value)
        return web.Response(text=value, headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl})

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("X-aws-ec2-metadata-token") in self.tokens

    async def roles(self, request: web.Request) -> web.Response:
        self.requests.append({"method": "GET", "path": request.path, "headers": dict(request.headers)})
        if not self._authorized(request):
            return web.Response(status=401, text="Unauthorized")
        return web.Response(text=self.role)

    async def credentials(self, request: web.Request) -> web.Response:
        self.requests.append({"method": "GET", "path": request.path, "headers": dict(request.headers)})
        if not self._authorized(request):
            return web.Response(status=401, text="Unauthorized")
        if request.match_info["role"] != self.role:
            return web.Response(status=404, text="Not Found")
        paced = await self._pace()
        if paced is not None:
            return paced
        c = self.issue("ASIA")
        return web.json_response(
            {
                "Code": "Success",
                "LastUpdated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "Type": "AWS-HMAC",
                "AccessKeyId": c.access_key_id,
                "SecretAccessKey": c.secret_access_key,
                "Token": c.session_token,
                "Expiration": c.expiration,
            }
        )
