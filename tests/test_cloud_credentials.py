"""Cloud credentials the way pods get them, for Vertex AI and Azure OpenAI / AI Foundry, through
the OpenAI SDK against loopback fakes of the GCE metadata server, Google STS + IAM
Credentials impersonation, and the Entra ID token endpoint (tests/fakes/cloud_identity.py).

Covered: Vertex from the metadata server (GKE Workload Identity; project id from it too),
from a GOOGLE_APPLICATION_CREDENTIALS external_account file (file and URL subject tokens,
with and without impersonation) and service_account file; the metadata server is never
reached unless configured; Azure OpenAI and Foundry from a federated token file (re-read on
refresh) and from a client secret, the client's own key never forwarded; tokens cached,
refreshed in the background before expiry without blocking requests, one refresh in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ferro_proxy import redaction
from ferro_proxy.config import ConfigError
from providers import token_cache
from tests.fakes.azure_foundry_upstream import FakeAzureFoundry
from tests.fakes.cloud_identity import (
    COGNITIVE_SCOPE,
    JWT_BEARER_ASSERTION,
    FakeAzureOpenAI,
    FakeEntra,
    FakeGCEMetadata,
    FakeGoogleSTS,
)
from tests.fakes.vertex_upstream import FakeVertex

REGION = "us-central1"


def model_path(project: str) -> str:
    return (
        f"/v1/projects/{project}/locations/{REGION}/publishers/google/models/gemini-2.0-flash:generateContent"
    )


def sdk(gw, api_key: str = "sk-placeholder") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=api_key, base_url=gw.proxy_url + "/v1", max_retries=0)


async def ask(client: openai.AsyncOpenAI, model: str = "vertex-ai/gemini-2.0-flash") -> str:
    resp = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])
    return resp.choices[0].message.content or ""


class Clock:
    """Moves the token cache's clock; everything else keeps real time."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._real = token_cache.now

    def __call__(self) -> float:
        return self._real() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(token_cache, "now", c)
    return c


async def settle(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------ Google fixtures


@pytest.fixture
async def vertex() -> AsyncIterator[FakeVertex]:
    fake = await FakeVertex().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def metadata(vertex) -> AsyncIterator[FakeGCEMetadata]:
    fake = await FakeGCEMetadata(issued=vertex.bearer_tokens).start()
    yield fake
    await fake.stop()


@pytest.fixture
async def sts(vertex) -> AsyncIterator[FakeGoogleSTS]:
    fake = await FakeGoogleSTS(issued=vertex.bearer_tokens).start()
    yield fake
    await fake.stop()


def vertex_env(vertex: FakeVertex, **extra: str) -> dict[str, str]:
    return {"VERTEX_AI_REGION": REGION, "VERTEX_AI_BASE_URL": vertex.base_url, **extra}


def external_account(sts: FakeGoogleSTS, source: dict, *, impersonate: bool, **extra) -> dict:
    data = {
        "type": "external_account",
        "audience": sts.audience,
        "subject_token_type": sts.subject_token_type,
        "token_url": sts.token_url,
        "credential_source": source,
        **extra,
    }
    if impersonate:
        data["service_account_impersonation_url"] = sts.impersonation_url
    return data


def write_json(path: Path, data: dict) -> str:
    path.write_bytes(orjson.dumps(data))
    return str(path)


# ------------------------------------------------------------------ Vertex: metadata server


async def test_vertex_authenticates_from_the_metadata_server(gateway_factory, vertex, metadata):
    vertex.vertex_project = metadata.project_id
    gw = await gateway_factory(env=vertex_env(vertex, GCE_METADATA_HOST=metadata.host))
    client = sdk(gw)
    for _ in range(3):
        assert await ask(client) == vertex.reply_text
    assert metadata.token_requests == 1, "the token is cached until it nears expiry"
    assert metadata.project_requests == 1, "the project id is asked once"
    assert metadata.flavors and all(f == "Google" for f in metadata.flavors)
    sent = vertex.requests[-1]
    assert sent.path == model_path(metadata.project_id), "the project comes from the metadata server"
    assert sent.headers["Authorization"][7:] in metadata.issued
    assert "x-goog-api-key" not in sent.headers
    assert gw.gateway.providers["vertex-ai"].health()["auth"] == "metadata"


async def test_metadata_token_with_configured_project_and_explicit_flag(gateway_factory, vertex, metadata):
    env = vertex_env(
        vertex,
        VERTEX_AI_PROJECT_ID="my-project",
        VERTEX_AI_USE_METADATA="true",
        GCE_METADATA_HOST=metadata.host,
    )
    client = sdk(await gateway_factory(env=env))
    assert await ask(client) == vertex.reply_text
    assert vertex.requests[-1].path == model_path("my-project")
    assert metadata.project_requests == 0


async def test_config_credentials_metadata(gateway_factory, vertex, metadata):
    vertex.vertex_project = "cfg-project"
    config = {"providers": {"vertex-ai": {"project": "cfg-project", "credentials": "metadata"}}}
    client = sdk(
        await gateway_factory(config=config, env=vertex_env(vertex, GCE_METADATA_HOST=metadata.host))
    )
    assert await ask(client) == vertex.reply_text
    assert vertex.requests[-1].headers["Authorization"][7:] in metadata.issued


async def test_the_metadata_server_is_not_used_unless_configured(gateway_factory, vertex, metadata):
    gw = await gateway_factory(env=vertex_env(vertex, VERTEX_AI_PROJECT_ID="my-project"))
    assert "vertex-ai" not in gw.gateway.providers, "no credential configured: not enabled, nothing probed"
    gw = await gateway_factory(
        env=vertex_env(
            vertex, VERTEX_AI_PROJECT_ID="p", GCE_METADATA_HOST=metadata.host, VERTEX_AI_USE_METADATA="false"
        )
    )
    assert "vertex-ai" not in gw.gateway.providers
    await asyncio.sleep(0.05)
    assert metadata.flavors == [], "no request reached the metadata server"


async def test_an_answer_without_metadata_flavor_is_refused(gateway_factory, vertex, metadata):
    metadata.echo_flavor = False
    env = vertex_env(vertex, VERTEX_AI_PROJECT_ID="my-project", GCE_METADATA_HOST=metadata.host)
    client = sdk(await gateway_factory(env=env))
    with pytest.raises(openai.APIStatusError) as info:
        await ask(client)
    assert info.value.status_code == 502
    assert "did not answer as a GCE metadata server" in info.value.message
    assert vertex.requests == []


# ------------------------------------------------------------------ Vertex: external account


async def test_vertex_from_an_external_account_file_with_impersonation(
    gateway_factory, vertex, sts, tmp_path, clock
):
    token_file = tmp_path / "token"
    token_file.write_text("eyJ.k8s-projected.one\n")
    sts.subject_tokens.add("eyJ.k8s-projected.one")
    creds = external_account(sts, {"file": str(token_file)}, impersonate=True)
    env = vertex_env(
        vertex,
        VERTEX_AI_PROJECT_ID="my-project",
        GOOGLE_APPLICATION_CREDENTIALS=write_json(tmp_path / "wif.json", creds),
    )
    gw = await gateway_factory(env=env)
    client = sdk(gw)
    assert await ask(client) == vertex.reply_text
    form = sts.exchanges[-1]
    assert form == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "subject_token_type": sts.subject_token_type,
        "subject_token": "eyJ.k8s-projected.one",
        "audience": sts.audience,
        "scope": "https://www.googleapis.com/auth/cloud-platform",
    }
    imp = sts.impersonations[-1]
    assert imp["authorization"][7:] in sts.sts_tokens
    assert imp["body"] == {"scope": ["https://www.googleapis.com/auth/cloud-platform"], "lifetime": "3600s"}
    used = vertex.requests[-1].headers["Authorization"][7:]
    assert used.startswith("ya29.impersonated-"), "the impersonated token, not the STS one, is used"
    assert gw.gateway.providers["vertex-ai"].health()["auth"] == "external_account"

    # the kubelet rotates the projected token: the next refresh reads the new one
    token_file.write_text("eyJ.k8s-projected.two")
    sts.subject_tokens = {"eyJ.k8s-projected.two"}
    clock.advance(3600)
    assert await ask(client) == vertex.reply_text
    assert sts.exchanges[-1]["subject_token"] == "eyJ.k8s-projected.two"
    assert vertex.requests[-1].headers["Authorization"][7:] != used


async def test_external_account_url_source_json_format_without_impersonation(
    gateway_factory, vertex, sts, tmp_path
):
    name, value = sts.url_source_header
    source = {
        "url": f"{sts.url}/subject-token",
        "headers": {name: value},
        "format": {"type": "json", "subject_token_field_name": "value"},
    }
    creds = external_account(sts, source, impersonate=False, quota_project_id="quota-project")
    vertex.vertex_project = "quota-project"
    env = vertex_env(vertex, GOOGLE_APPLICATION_CREDENTIALS=write_json(tmp_path / "wif.json", creds))
    client = sdk(await gateway_factory(env=env))
    assert await ask(client) == vertex.reply_text
    assert sts.exchanges[-1]["subject_token"] == sts.url_source_token
    assert sts.impersonations == []
    sent = vertex.requests[-1]
    assert sent.headers["Authorization"][7:] in sts.sts_tokens
    assert sent.path == model_path("quota-project"), "the project comes from the credentials file"


async def test_rejected_subject_token_is_a_502_without_the_token(gateway_factory, vertex, sts, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("eyJ.not-trusted")
    creds = external_account(sts, {"file": str(token_file)}, impersonate=True)
    env = vertex_env(
        vertex,
        VERTEX_AI_PROJECT_ID="my-project",
        GOOGLE_APPLICATION_CREDENTIALS=write_json(tmp_path / "wif.json", creds),
    )
    client = sdk(await gateway_factory(env=env))
    with pytest.raises(openai.APIStatusError) as info:
        await ask(client)
    assert info.value.status_code == 502
    assert "The subject token is invalid or expired." in info.value.message
    assert "eyJ.not-trusted" not in info.value.response.text
    assert vertex.requests == [] and sts.impersonations == []


async def test_application_credentials_service_account_file(gateway_factory, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    vertex = await FakeVertex(public_key=key.public_key()).start()
    try:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        account = {
            "type": "service_account",
            "project_id": "sa-project",
            "private_key_id": "k1",
            "private_key": pem,
            "client_email": vertex.client_email,
            "token_uri": vertex.token_uri,
        }
        vertex.vertex_project = "sa-project"
        env = vertex_env(vertex, GOOGLE_APPLICATION_CREDENTIALS=write_json(tmp_path / "sa.json", account))
        client = sdk(await gateway_factory(env=env))
        assert await ask(client) == vertex.reply_text
        assert len(vertex.token_requests) == 1
        assert vertex.requests[-1].path == model_path("sa-project")
        line = pem.splitlines()[1]
        assert redaction.redact_text(f"x {line} y") == f"x {redaction.REDACTED} y", "the key is registered"
    finally:
        await vertex.stop()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            {"type": "authorized_user", "client_secret": "very-secret-value-1"},
            "'authorized_user' are not supported",
        ),
        ({"type": "external_account", "audience": "a", "subject_token_type": "t"}, "lacks credential_source"),
        (
            {
                "type": "external_account",
                "audience": "a",
                "subject_token_type": "t",
                "credential_source": {"environment_id": "aws1", "region_url": "http://x"},
            },
            "not AWS or executable",
        ),
    ],
)
async def test_unusable_credentials_files_are_config_errors(
    gateway_factory, vertex, tmp_path, content, expected
):
    env = vertex_env(
        vertex,
        VERTEX_AI_PROJECT_ID="p",
        GOOGLE_APPLICATION_CREDENTIALS=write_json(tmp_path / "c.json", content),
    )
    with pytest.raises(ConfigError) as info:
        await gateway_factory(env=env)
    assert expected in str(info.value) and "very-secret-value-1" not in str(info.value)


# ------------------------------------------------------------------ refresh


async def test_refresh_before_expiry_does_not_block_and_runs_once(gateway_factory, vertex, metadata, clock):
    env = vertex_env(vertex, VERTEX_AI_PROJECT_ID="my-project", GCE_METADATA_HOST=metadata.host)
    client = sdk(await gateway_factory(env=env))
    assert await ask(client) == vertex.reply_text
    first = vertex.requests[-1].headers["Authorization"]
    assert metadata.token_requests == 1

    # inside the early window (the last 5 minutes): the request goes on with the old token
    # while one background refresh waits on the metadata server
    metadata.hold = asyncio.Event()
    clock.advance(3599 - 200)
    answers = await asyncio.wait_for(asyncio.gather(*(ask(client) for _ in range(5))), timeout=5)
    assert answers == [vertex.reply_text] * 5
    assert {r.headers["Authorization"] for r in vertex.requests[-5:]} == {first}
    await settle(lambda: metadata.token_requests == 2)
    assert metadata.token_requests == 2, "one refresh in flight"
    metadata.hold.set()
    await asyncio.sleep(0.05)
    assert await ask(client) == vertex.reply_text
    second = vertex.requests[-1].headers["Authorization"]
    assert second != first and metadata.token_requests == 2

    # past expiry: requests wait, and share one refresh
    metadata.hold = asyncio.Event()
    clock.advance(3600)
    pending = [asyncio.create_task(ask(client)) for _ in range(4)]
    await settle(lambda: metadata.token_requests == 3)
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in pending), "an expired token is never used"
    metadata.hold.set()
    assert await asyncio.gather(*pending) == [vertex.reply_text] * 4
    assert metadata.token_requests == 3
    assert {r.headers["Authorization"] for r in vertex.requests[-4:]} - {first, second}


async def test_failed_background_refresh_keeps_the_valid_token(gateway_factory, vertex, metadata, clock):
    env = vertex_env(vertex, VERTEX_AI_PROJECT_ID="my-project", GCE_METADATA_HOST=metadata.host)
    client = sdk(await gateway_factory(env=env))
    await ask(client)
    first = vertex.requests[-1].headers["Authorization"]
    metadata.echo_flavor = False  # the refresh fails
    clock.advance(3599 - 200)
    assert await ask(client) == vertex.reply_text
    await settle(lambda: metadata.token_requests == 2)
    assert await ask(client) == vertex.reply_text
    assert vertex.requests[-1].headers["Authorization"] == first
    assert metadata.token_requests == 2, "a failed background refresh is not retried at once"


# ------------------------------------------------------------------ Azure fixtures


@pytest.fixture
async def entra() -> AsyncIterator[FakeEntra]:
    fake = await FakeEntra().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def azure_openai(entra) -> AsyncIterator[FakeAzureOpenAI]:
    fake = await FakeAzureOpenAI(bearer_tokens=entra.issued).start()
    yield fake
    await fake.stop()


@pytest.fixture
async def foundry(entra) -> AsyncIterator[FakeAzureFoundry]:
    fake = await FakeAzureFoundry(bearer_tokens=entra.issued).start()
    yield fake
    await fake.stop()


def entra_env(entra: FakeEntra, **extra: str) -> dict[str, str]:
    return {
        "AZURE_CLIENT_ID": entra.client_id,
        "AZURE_TENANT_ID": entra.tenant_id,
        "AZURE_AUTHORITY_HOST": entra.url + "/",  # the workload identity webhook adds the slash
        **extra,
    }


def federated(entra: FakeEntra, tmp_path: Path, token: str = "eyJ.aks-sa-token.one") -> str:
    path = tmp_path / "azure-identity-token"
    path.write_text(token)
    entra.federated_tokens.add(token)
    return str(path)


# ------------------------------------------------------------------ Azure OpenAI


async def test_azure_openai_with_a_federated_token(gateway_factory, entra, azure_openai, tmp_path, clock):
    env = entra_env(
        entra,
        AZURE_FEDERATED_TOKEN_FILE=federated(entra, tmp_path),
        AZURE_OPENAI_ENDPOINT=azure_openai.endpoint,
        AZURE_OPENAI_DEPLOYMENT="prod-gpt4o",
    )
    gw = await gateway_factory(env=env)
    client = sdk(gw, api_key="client-own-azure-key-0123456789")
    for _ in range(2):
        assert await ask(client, "azure-openai/gpt-4o") == azure_openai.reply_text
    assert len(entra.forms) == 1
    assert entra.forms[0] == {
        "grant_type": "client_credentials",
        "client_id": entra.client_id,
        "scope": COGNITIVE_SCOPE,
        "client_assertion_type": JWT_BEARER_ASSERTION,
        "client_assertion": "eyJ.aks-sa-token.one",
    }
    sent = azure_openai.requests[-1]
    assert sent.path.startswith("/openai/deployments/prod-gpt4o/chat/completions?api-version=")
    assert sent.headers["Authorization"][7:] in entra.issued
    assert "api-key" not in sent.headers, "the client's own key is never forwarded"
    assert all("client-own-azure-key" not in str(r.headers) for r in azure_openai.requests)
    provider = gw.gateway.providers["azure-openai"]
    assert provider.has_own_credentials() and provider.health()["auth"] == "entra"

    # the projected token rotates; the next refresh sends the new one
    (tmp_path / "azure-identity-token").write_text("eyJ.aks-sa-token.two")
    entra.federated_tokens = {"eyJ.aks-sa-token.two"}
    clock.advance(3600)
    assert await ask(client, "azure-openai/gpt-4o") == azure_openai.reply_text
    assert entra.forms[-1]["client_assertion"] == "eyJ.aks-sa-token.two"


async def test_azure_openai_with_a_client_secret(gateway_factory, entra, azure_openai):
    env = entra_env(
        entra,
        AZURE_CLIENT_SECRET=entra.client_secret,
        AZURE_OPENAI_ENDPOINT=azure_openai.endpoint,
    )
    client = sdk(await gateway_factory(env=env))
    stream = await client.chat.completions.create(
        model="azure-openai/gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == azure_openai.reply_text
    form = entra.forms[-1]
    assert form["client_secret"] == entra.client_secret and "client_assertion" not in form
    assert form["grant_type"] == "client_credentials" and form["scope"] == COGNITIVE_SCOPE
    assert azure_openai.requests[-1].headers["Authorization"][7:] in entra.issued


async def test_azure_openai_passthrough_uses_the_entra_token(gateway_factory, entra, azure_openai):
    env = entra_env(
        entra, AZURE_CLIENT_SECRET=entra.client_secret, AZURE_OPENAI_ENDPOINT=azure_openai.endpoint
    )
    config = {"providers": {"azure-openai": {"base_url": azure_openai.endpoint + "/openai"}}}
    client = sdk(await gateway_factory(config=config, env=env))
    await client.with_options(default_headers={"x-ferro-provider": "azure-openai"}).files.list()
    sent = azure_openai.requests[-1]
    assert sent.headers["Authorization"][7:] in entra.issued and "api-key" not in sent.headers


async def test_api_key_wins_over_entra(gateway_factory, entra, azure_openai):
    env = entra_env(
        entra,
        AZURE_CLIENT_SECRET=entra.client_secret,
        AZURE_OPENAI_ENDPOINT=azure_openai.endpoint,
        AZURE_OPENAI_API_KEY=azure_openai.api_key,
    )
    client = sdk(await gateway_factory(env=env))
    assert await ask(client, "azure-openai/gpt-4o") == azure_openai.reply_text
    assert azure_openai.requests[-1].headers["api-key"] == azure_openai.api_key
    assert entra.forms == []


async def test_wrong_client_secret_is_a_502_naming_the_aad_error(gateway_factory, entra, azure_openai):
    env = entra_env(
        entra, AZURE_CLIENT_SECRET="wrong-secret-value-0123", AZURE_OPENAI_ENDPOINT=azure_openai.endpoint
    )
    client = sdk(await gateway_factory(env=env))
    with pytest.raises(openai.APIStatusError) as info:
        await ask(client, "azure-openai/gpt-4o")
    assert info.value.status_code == 502
    assert "AADSTS7000215: Invalid client secret provided." in info.value.message
    assert "Trace ID" not in info.value.message and "wrong-secret-value" not in info.value.response.text
    assert azure_openai.requests == []


async def test_incomplete_entra_variables(gateway_factory, entra, azure_openai):
    gw = await gateway_factory(
        env={"AZURE_CLIENT_ID": entra.client_id, "AZURE_OPENAI_ENDPOINT": azure_openai.endpoint}
    )
    assert "azure-openai" not in gw.gateway.providers, "incomplete variables do not enable it"
    config = {"providers": {"azure-openai": {"base_url": azure_openai.endpoint, "credentials": "entra"}}}
    with pytest.raises(ConfigError) as info:
        await gateway_factory(config=config, env={"AZURE_CLIENT_ID": entra.client_id})
    assert "AZURE_TENANT_ID" in str(info.value)


# ------------------------------------------------------------------ Azure AI Foundry


async def test_foundry_with_a_federated_token(gateway_factory, entra, foundry, tmp_path):
    env = entra_env(
        entra, AZURE_FEDERATED_TOKEN_FILE=federated(entra, tmp_path), AZURE_FOUNDRY_ENDPOINT=foundry.endpoint
    )
    gw = await gateway_factory(env=env)
    client = sdk(gw, api_key="client-own-foundry-key-0123456789")
    assert await ask(client, "azure-foundry/Phi-4") == foundry.reply_text
    resp = await client.embeddings.create(model="azure-foundry/Cohere-embed-v3-english", input=["a"])
    assert len(resp.data) == 1
    assert len(entra.forms) == 1 and entra.forms[0]["client_assertion"] == "eyJ.aks-sa-token.one"
    for sent in foundry.requests:
        assert sent.headers["Authorization"][7:] in entra.issued and "api-key" not in sent.headers
    assert gw.gateway.providers["azure-foundry"].has_own_credentials()


async def test_foundry_with_a_client_secret(gateway_factory, entra, foundry):
    env = entra_env(entra, AZURE_CLIENT_SECRET=entra.client_secret, AZURE_FOUNDRY_ENDPOINT=foundry.endpoint)
    client = sdk(await gateway_factory(env=env))
    assert await ask(client, "azure-foundry/Phi-4") == foundry.reply_text
    assert entra.forms[-1]["client_secret"] == entra.client_secret
    assert foundry.requests[-1].path == "/models/chat/completions?api-version=2024-05-01-preview"
    token = foundry.requests[-1].headers["Authorization"][7:]
    assert redaction.redact_text(f"got {token}") == f"got {redaction.REDACTED}", "tokens are registered"
