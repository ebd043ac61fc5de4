"""Fakes of the identity endpoints pods get cloud credentials from, on loopback.

- `FakeGCEMetadata`: the GCE / GKE metadata server. `GET /computeMetadata/v1/instance/
  service-accounts/default/token` answers `{"access_token", "expires_in", "token_type"}`,
  `GET /computeMetadata/v1/project/project-id` the project id as text; both require
  `Metadata-Flavor: Google` (403 otherwise, as the real server) and echo it.
- `FakeGoogleSTS`: Google's Security Token Service `POST /v1/token` (RFC 8693 token
  exchange, a form) and IAM Credentials `POST /v1/projects/-/serviceAccounts/{email}:
  generateAccessToken` (JSON `{"scope", "lifetime"}`, the STS token as bearer, answering
  `{"accessToken", "expireTime"}`), plus `GET /subject-token`, a URL credential source.
- `FakeEntra`: the Microsoft identity platform's `POST /{tenant}/oauth2/v2.0/token`
  (client credentials with a client secret or a federated `client_assertion`), errors in
  AAD's `{"error", "error_description", "error_codes"}` shape.
- `FakeAzureOpenAI`: `POST /openai/deployments/{deployment}/chat/completions?api-version=…`
  accepting an `api-key` or an Entra bearer token the fake Entra issued.

`hold` (an asyncio.Event) makes a token endpoint wait before answering, for tests of
refreshes that must not block requests.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.loopback_server import LoopbackServer
from tests.fakes.openai_upstream import FakeOpenAI

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
COGNITIVE_SCOPE = "https://cognitiveservices.azure.com/.default"


@dataclass
class _Server(LoopbackServer):
    hold: asyncio.Event | None = None

    async def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        await super().stop()

    async def _wait(self) -> None:
        if self.hold is not None:
            await self.hold.wait()


@dataclass
class FakeGCEMetadata(_Server):
    project_id: str = "meta-project"
    token_lifetime: int = 3599
    echo_flavor: bool = True  # False: answer like some other web server on that port
    issued: set[str] = field(default_factory=set)  # shared with the fake Vertex to accept them
    token_requests: int = 0
    project_requests: int = 0
    flavors: list[str | None] = field(default_factory=list)  # Metadata-Flavor of every request

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"  # what GCE_METADATA_HOST holds

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/computeMetadata/v1/instance/service-accounts/default/token", self.token)
        app.router.add_get("/computeMetadata/v1/project/project-id", self.project)

    def _refused(self, request: web.Request) -> web.Response | None:
        self.flavors.append(request.headers.get("Metadata-Flavor"))
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403, text="Missing Metadata-Flavor:Google header.")
        return None

    def _headers(self) -> dict[str, str]:
        return {"Metadata-Flavor": "Google"} if self.echo_flavor else {}

    async def token(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        self.token_requests += 1
        await self._wait()
        token = "ya29.meta-" + secrets.token_hex(8)
        self.issued.add(token)
        body = {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        return web.json_response(body, headers=self._headers())

    async def project(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        self.project_requests += 1
        return web.Response(text=self.project_id, headers=self._headers())


@dataclass
class FakeGoogleSTS(_Server):
    audience: str = (
        "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/k8s"
    )
    subject_token_type: str = "urn:ietf:params:oauth:token-type:jwt"
    service_account: str = "vertex-caller@my-project.iam.gserviceaccount.com"
    subject_tokens: set[str] = field(default_factory=set)  # subject tokens the STS accepts
    url_source_token: str = "eyJ.url-sourced.subject"
    url_source_header: tuple[str, str] = ("X-Identity-Header", "ident-123")
    issued: set[str] = field(default_factory=set)  # final tokens: shared with the fake Vertex
    sts_tokens: set[str] = field(default_factory=set)
    exchanges: list[dict[str, str]] = field(default_factory=list)  # STS forms received
    impersonations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def token_url(self) -> str:
        return f"{self.url}/v1/token"

    @property
    def impersonation_url(self) -> str:
        return f"{self.url}/v1/projects/-/serviceAccounts/{self.service_account}:generateAccessToken"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/token", self.exchange)
        app.router.add_post("/v1/projects/-/serviceAccounts/{target}", self.generate_access_token)
        app.router.add_get("/subject-token", self.subject_token)

    @staticmethod
    def _oauth_error(error: str, description: str, status: int = 400) -> web.Response:
        return web.json_response({"error": error, "error_description": description}, status=status)

    async def exchange(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.exchanges.append(form)
        if form.get("grant_type") != TOKEN_EXCHANGE:
            return self._oauth_error("unsupported_grant_type", "Invalid grant_type.")
        if form.get("requested_token_type") != ACCESS_TOKEN_TYPE:
            return self._oauth_error("invalid_request", "Invalid requested_token_type.")
        if form.get("subject_token_type") != self.subject_token_type:
            return self._oauth_error("invalid_request", "Invalid subject_token_type.")
        if form.get("audience") != self.audience:
            return self._oauth_error(
                "invalid_target", "The target service indicated by the audience is invalid."
            )
        if CLOUD_PLATFORM not in form.get("scope", "").split():
            return self._oauth_error("invalid_scope", "Invalid scope.")
        if form.get("subject_token") not in self.subject_tokens:
            return self._oauth_error("invalid_grant", "The subject token is invalid or expired.")
        await self._wait()
        token = "ya29.sts-" + secrets.token_hex(8)
        self.sts_tokens.add(token)
        self.issued.add(token)
        return web.json_response(
            {
                "access_token": token,
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "token_type": "Bearer",
                "expires_in": 3600,
            }
        )

    async def generate_access_token(self, request: web.Request) -> web.Response:
        target = request.match_info["target"]
        body = orjson.loads(await request.read() or b"{}")
        auth = request.headers.get("Authorization", "")
        self.impersonations.append({"target": target, "body": body, "authorization": auth})
        if target != f"{self.service_account}:generateAccessToken":
            return web.json_response(
                {"error": {"code": 404, "message": "Not found", "status": "NOT_FOUND"}}, status=404
            )
        if not auth.startswith("Bearer ") or auth[7:] not in self.sts_tokens:
            return web.json_response(
                {
                    "error": {
                        "code": 401,
                        "message": "Request had invalid authentication credentials.",
                        "status": "UNAUTHENTICATED",
                    }
                },
                status=401,
            )
        if CLOUD_PLATFORM not in body.get("scope", []):
            return web.json_response(
                {"error": {"code": 400, "message": "Invalid scope", "status": "INVALID_ARGUMENT"}}, status=400
            )
        lifetime = int(str(body.get("lifetime", "3600s")).rstrip("s"))
        token = "ya29.impersonated-" + secrets.token_hex(8)
        self.issued.add(token)
        expire = datetime.fromtimestamp(time.time() + lifetime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response({"accessToken": token, "expireTime": expire})

    async def subject_token(self, request: web.Request) -> web.Response:
        name, value = self.url_source_header
        if request.headers.get(name) != value:
            return web.Response(status=401, text="missing identity header")
        self.subject_tokens.add(self.url_source_token)
        return web.json_response({"value": self.url_source_token, "kind": "oidc"})


@dataclass
class FakeEntra(_Server):
    tenant_id: str = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    client_id: str = "0d4d5a3c-8e2f-4a55-9f3a-0c6b2d1e9a77"
    client_secret: str = "entra-client-secret-7Qx~Zk"
    federated_tokens: set[str] = field(default_factory=set)  # assertions it accepts
    token_lifetime: int = 3599
    issued: set[str] = field(default_factory=set)
    forms: list[dict[str, str]] = field(default_factory=list)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self.token)

    @staticmethod
    def _aad_error(status: int, error: str, code: int, description: str) -> web.Response:
        body = {
            "error": error,
            "error_description": f"AADSTS{code}: {description}\r\nTrace ID: 0000\r\nCorrelation ID: 1111",
            "error_codes": [code],
            "timestamp": "2025-01-01 00:00:00Z",
        }
        return web.json_response(body, status=status)

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.forms.append(form)
        if request.match_info["tenant"] != self.tenant_id:
            return self._aad_error(
                400, "invalid_request", 90002, f"Tenant '{request.match_info['tenant']}' not found."
            )
        if form.get("grant_type") != "client_credentials":
            return self._aad_error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        if form.get("client_id") != self.client_id:
            return self._aad_error(
                400, "unauthorized_client", 700016, "Application not found in the directory."
            )
        if form.get("scope") != COGNITIVE_SCOPE:
            return self._aad_error(
                400, "invalid_scope", 1002012, "The provided value for scope is not valid."
            )
        if "client_secret" in form:
            if form["client_secret"] != self.client_secret:
                return self._aad_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        elif form.get("client_assertion_type") == JWT_BEARER_ASSERTION:
            if form.get("client_assertion") not in self.federated_tokens:
                return self._aad_error(
                    400, "invalid_client", 700024, "Client assertion is not within its valid time range."
                )
        else:
            return self._aad_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain client_assertion or client_secret.",
            )
        await self._wait()
        token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.entra-" + secrets.token_hex(8)
        self.issued.add(token)
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": token,
            }
        )


@dataclass
class FakeAzureOpenAI(FakeOpenAI):
    name: str = "fake-azure-openai"
    api_key: str = "azure-openai-test-key"
    reply_text: str = "Hello from fake Azure OpenAI."
    bearer_tokens: set[str] = field(default_factory=set)  # Entra tokens it accepts

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeAzureOpenAI:  # type: ignore[override]
        app = web.Application()
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.azure_chat)
        app.router.add_route("*", "/openai/{tail:.*}", self.azure_other)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[7:] in self.bearer_tokens:
            return None
        if request.headers.get("api-key") == self.api_key:
            return None
        return web.json_response(
            {
                "error": {
                    "code": "401",
                    "message": "Access denied due to invalid subscription key or wrong API endpoint.",
                }
            },
            status=401,
        )

    async def azure_chat(self, request: web.Request) -> web.StreamResponse:
        refused = self._unauthorized(request)
        if refused is not None:
            await self._record(request)
            return refused
        if not request.query.get("api-version"):
            return web.json_response({"error": {"code": "404", "message": "Resource not found"}}, status=404)
        return await self.chat(request)

    async def azure_other(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        refused = self._unauthorized(request)
        return refused or web.json_response({"object": "list", "data": []})
