"""The Vertex AI adapter through the OpenAI SDK: API-key and service-account auth (a JWT signed
locally and exchanged at a fake token endpoint that verifies it), chat, streaming, tools,
vision, embeddings and Imagen against a fake Vertex AI on loopback."""

from __future__ import annotations

import base64

import aiohttp
import openai
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ferro_proxy.config import ConfigError
from tests.fakes.gemini_upstream import TINY_PNG_B64
from tests.fakes.vertex_upstream import FakeVertex

PROVIDERS_COVERED = {"vertex-ai"}

MODEL_PATH = "/v1/projects/my-project/locations/us-central1/publishers/google/models"


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="module")
def key_pair() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def fake(key_pair) -> FakeVertex:
    fake = await FakeVertex(public_key=key_pair.public_key()).start()
    yield fake
    await fake.stop()


def service_account(fake: FakeVertex, key: rsa.RSAPrivateKey) -> dict[str, str]:
    return {
        "type": "service_account",
        "project_id": "my-project",
        "private_key_id": "key-1",
        "private_key": _pem(key),
        "client_email": fake.client_email,
        "token_uri": fake.token_uri,
    }


def vertex_env(fake: FakeVertex, **extra: str) -> dict[str, str]:
    return {
        "VERTEX_AI_PROJECT_ID": "my-project",
        "VERTEX_AI_REGION": "us-central1",
        "VERTEX_AI_BASE_URL": fake.base_url,
        **extra,
    }


def sdk(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-placeholder", base_url=gw.proxy_url + "/v1", max_retries=0)


@pytest.fixture
async def key_client(gateway_factory, fake) -> openai.AsyncOpenAI:
    return sdk(await gateway_factory(env=vertex_env(fake, VERTEX_AI_API_KEY=fake.api_key)))


@pytest.fixture
async def sa_client(gateway_factory, fake, key_pair) -> openai.AsyncOpenAI:
    account = orjson.dumps(service_account(fake, key_pair)).decode()
    return sdk(await gateway_factory(env=vertex_env(fake, VERTEX_AI_SERVICE_ACCOUNT_JSON=account)))


async def test_chat_with_api_key(key_client, fake):
    resp = await key_client.chat.completions.create(
        model="gemini-2.0-flash",
        messages=[{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
        max_completion_tokens=20,
    )
    assert resp.choices[0].message.content == fake.reply_text
    assert resp.usage.prompt_tokens_details.cached_tokens == 4
    sent = fake.requests[-1]
    assert sent.path == f"{MODEL_PATH}/gemini-2.0-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == fake.api_key
    assert sent.body["systemInstruction"] == {"parts": [{"text": "Be terse."}]}
    assert sent.body["generationConfig"] == {"maxOutputTokens": 20}


async def test_service_account_token_is_signed_exchanged_and_cached(sa_client, fake):
    for _ in range(3):
        resp = await sa_client.chat.completions.create(
            model="gemini-2.0-flash", messages=[{"role": "user", "content": "Hi"}]
        )
        assert resp.choices[0].message.content == fake.reply_text
    assert len(fake.token_requests) == 1, "the access token is reused until it nears expiry"
    claims = fake.token_requests[0]
    assert claims["iss"] == fake.client_email and claims["aud"] == fake.token_uri
    auths = {r.headers.get("Authorization") for r in fake.requests}
    assert len(auths) == 1 and next(iter(auths)) in {"Bearer " + t for t in fake.bearer_tokens}
    assert all("x-goog-api-key" not in r.headers for r in fake.requests)


async def test_short_lived_token_is_refreshed(gateway_factory, fake, key_pair):
    fake.token_lifetime = 30  # inside the refresh margin: every call needs a new token
    account = orjson.dumps(service_account(fake, key_pair)).decode()
    client = sdk(await gateway_factory(env=vertex_env(fake, VERTEX_AI_SERVICE_ACCOUNT_JSON=account)))
    await client.chat.completions.create(
        model="gemini-2.0-flash", messages=[{"role": "user", "content": "Hi"}]
    )
    before = len(fake.token_requests)
    await client.chat.completions.create(
        model="gemini-2.0-flash", messages=[{"role": "user", "content": "Hi"}]
    )
    assert len(fake.token_requests) == before + 1


async def test_service_account_from_a_file_path(gateway_factory, fake, key_pair, tmp_path):
    path = tmp_path / "sa.json"
    path.write_bytes(orjson.dumps(service_account(fake, key_pair)))
    client = sdk(await gateway_factory(env=vertex_env(fake, VERTEX_AI_SERVICE_ACCOUNT_JSON=str(path))))
    stream = await client.chat.completions.create(
        model="gemini-2.0-flash", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == fake.reply_text
    assert fake.requests[-1].path == f"{MODEL_PATH}/gemini-2.0-flash:streamGenerateContent?alt=sse"
    assert fake.requests[-1].headers["Authorization"].startswith("Bearer ya29.fake-")


async def test_key_the_token_endpoint_rejects(gateway_factory, fake):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account = service_account(fake, other)
    client = sdk(
        await gateway_factory(
            env=vertex_env(fake, VERTEX_AI_SERVICE_ACCOUNT_JSON=orjson.dumps(account).decode())
        )
    )
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(
            model="gemini-2.0-flash", messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.status_code == 502
    assert "Invalid JWT Signature" in info.value.message
    assert "PRIVATE KEY" not in info.value.response.text
    assert fake.requests == [], "no model call without a token"


async def test_broken_service_account_is_a_config_error_without_secrets(gateway_factory, fake):
    with pytest.raises(ConfigError) as info:
        await gateway_factory(
            env=vertex_env(fake, VERTEX_AI_SERVICE_ACCOUNT_JSON='{"private_key": "super-secret-pem"}')
        )
    assert "client_email" in str(info.value) and "super-secret-pem" not in str(info.value)


async def test_tool_round_trip_and_image_input(sa_client, fake):
    fake.tool_call = {"name": "lookup", "args": {"q": "fox"}}
    tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + TINY_PNG_B64}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "What animal?"}, image]}]
    first = await sa_client.chat.completions.create(model="gemini-2.5-flash", messages=messages, tools=[tool])
    call = first.choices[0].message.tool_calls[0]
    assert fake.requests[-1].body["contents"][0]["parts"][1] == {
        "inlineData": {"mimeType": "image/png", "data": TINY_PNG_B64}
    }
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "a red fox"},
    ]
    final = await sa_client.chat.completions.create(model="gemini-2.5-flash", messages=messages, tools=[tool])
    assert final.choices[0].message.content == fake.reply_text
    assert fake.requests[-1].body["contents"][2]["parts"] == [
        {"functionResponse": {"name": "lookup", "response": {"content": "a red fox"}}}
    ]


async def test_embeddings_via_predict(key_client, fake):
    resp = await key_client.embeddings.create(model="text-embedding-005", input=["a", "b"], dimensions=2)
    assert [d.embedding for d in resp.data] == [pytest.approx([0.5, 1.0]), pytest.approx([1.0, 2.0])]
    assert resp.usage.prompt_tokens == 4
    sent = fake.requests[-1]
    assert sent.path == f"{MODEL_PATH}/text-embedding-005:predict"
    assert sent.body == {
        "instances": [{"content": "a"}, {"content": "b"}],
        "parameters": {"outputDimensionality": 2},
    }


async def test_imagen_via_predict(key_client, fake):
    resp = await key_client.images.generate(model="imagen-3.0-generate-002", prompt="a lighthouse")
    assert base64.b64decode(resp.data[0].b64_json).startswith(b"\x89PNG")
    assert fake.requests[-1].path == f"{MODEL_PATH}/imagen-3.0-generate-002:predict"


async def test_upstream_errors_are_mapped(key_client, fake):
    fake.script = [
        {"status": 400, "message": "Request contains an invalid argument."},
        {"status": 503, "message": "The service is currently unavailable."},
    ]
    with pytest.raises(openai.BadRequestError) as info:
        await key_client.chat.completions.create(
            model="gemini-2.0-flash", messages=[{"role": "user", "content": "Hi"}]
        )
    assert "invalid argument" in info.value.message and info.value.body["code"] == "INVALID_ARGUMENT"
    with pytest.raises(openai.APIStatusError) as info:
        await key_client.chat.completions.create(
            model="gemini-2.0-flash", messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.status_code == 502 and "currently unavailable" in info.value.message


async def test_models_are_listed(gateway_factory, fake):
    gw = await gateway_factory(env=vertex_env(fake, VERTEX_AI_API_KEY=fake.api_key))
    async with aiohttp.ClientSession() as s, s.get(gw.proxy_url + "/v1/models") as r:
        ids = {m["id"] for m in (await r.json())["data"] if m["owned_by"] == "vertex-ai"}
    assert {"gemini-2.5-pro", "text-embedding-005", "imagen-3.0-generate-002"} <= ids


def test_default_base_url_is_regional():
    from providers.base import resolve_settings
    from providers.registry import load_builtin_providers
    from providers.vertex import VertexAIProvider

    spec = load_builtin_providers()["vertex-ai"]
    for region, host in (("europe-west4", "europe-west4-aiplatform"), ("global", "aiplatform")):
        env = {"VERTEX_AI_PROJECT_ID": "p1", "VERTEX_AI_REGION": region, "VERTEX_AI_API_KEY": "k"}
        provider = VertexAIProvider(resolve_settings(spec, None, env), gateway=None)
        assert provider.model_url("gemini-2.0-flash", "generateContent") == (
            f"https://{host}.googleapis.com/v1/projects/p1/locations/{region}"
            "/publishers/google/models/gemini-2.0-flash:generateContent"
        )


async def test_pinning_chooses_vertex_when_gemini_is_also_enabled(gateway_factory, fake):
    env = vertex_env(
        fake, VERTEX_AI_API_KEY=fake.api_key, GEMINI_API_KEY=fake.api_key, GEMINI_BASE_URL=fake.base_url
    )
    client = sdk(await gateway_factory(env=env))
    await client.chat.completions.create(
        model="gemini-2.0-flash", messages=[{"role": "user", "content": "Hi"}]
    )
    assert fake.requests[-1].path == "/v1beta/models/gemini-2.0-flash:generateContent"
    await client.chat.completions.create(
        model="vertex-ai/gemini-2.0-flash", messages=[{"role": "user", "content": "Hi"}]
    )
    assert fake.requests[-1].path == f"{MODEL_PATH}/gemini-2.0-flash:generateContent"
