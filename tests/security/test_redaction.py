"""The redaction point itself: secrets masked by value (the registry and the request's own),
credentials the gateway was never told about masked by pattern, requests kept apart, and the
sources that fill the registry."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets

from ferro_proxy.config import ConfigError
from ferro_proxy.jsonlog import JsonFormatter, log_fields, scrub
from ferro_proxy.redaction import (
    REDACTED,
    add_request_secret,
    redact_known,
    redact_obj,
    redact_text,
    register,
    register_many,
    request_secrets,
)
from ferro_proxy.secret_sources import document_secrets, env_secrets


def _secret() -> str:
    return secrets.token_hex(12)  # looks like no credential pattern


def test_a_registered_value_is_masked_wherever_it_appears():
    key = _secret()
    assert redact_text(f"upstream said: bad key {key}!") == f"upstream said: bad key {key}!"
    register(key)
    assert redact_text(f"upstream said: bad key {key}!") == f"upstream said: bad key {REDACTED}!"
    assert redact_text(f'{{"k":"{key}{key}"}}') == f'{{"k":"{REDACTED}{REDACTED}"}}'


def test_short_values_are_never_registered():
    assert register("secret1") == 0  # 7 chars: would mask ordinary words
    assert redact_text("a secret1 here") == "a secret1 here"


def test_longest_value_first_leaves_no_remnant():
    short = _secret()
    longer = short + "-and-more-" + _secret()
    register_many([short, longer])
    assert redact_text(f"x {longer} y") == f"x {REDACTED} y"


def test_the_forms_a_secret_is_quoted_in():
    token = _secret() + '"/+'
    register(f"Bearer {token}")
    assert redact_text(f"header was Bearer {token}") == f"header was {REDACTED}"
    assert redact_text(f"bare {token} token") == f"bare {REDACTED} token"
    escaped = json.dumps(token)[1:-1]
    assert redact_text(f'{{"echo": "{escaped}"}}') == f'{{"echo": "{REDACTED}"}}'
    assert redact_text("url?x=" + token.replace('"', "%22").replace("/", "%2F").replace("+", "%2B")) == (
        f"url?x={REDACTED}"
    )


def test_patterns_mask_credentials_the_gateway_never_held():
    leaked = {
        "Incorrect API key provided: Bearer abcdef123456": "Incorrect API key provided: Bearer [REDACTED]",
        "key sk-proj-abcdefghijkl1234 used": "key [REDACTED] used",
        "sk-ant-api03-abcdefgh": "[REDACTED]",
        "groq gsk_0123456789abcdef": "groq [REDACTED]",
        "AIzaSyA1234567890abcdefghijklmn": "[REDACTED]",
        "id AKIAABCDEFGHIJKLMNOP.": "id [REDACTED].",
        "xai-abcdefghij12 hf_abcdefghijkl r8_abcdefghijkl": "[REDACTED] [REDACTED] [REDACTED]",
        "tok ya29.a0AfH6SMBabcdefghijklmnop": "tok [REDACTED]",
        "gh ghp_abcdefghijklmnopqrstuvwxyz": "gh [REDACTED]",
        "postgresql://app:hunter2hunter2@db:5432/x": "postgresql://app:[REDACTED]@db:5432/x",
        "https://h/v1beta/models/g:generate?key=abcdefgh123&alt=sse": "https://h/v1beta/models/g:generate?key=[REDACTED]&alt=sse",
        '{"x-api-key": "whatever-it-is"}': '{"x-api-key": "[REDACTED]"}',
        "api-key: 0a1b2c3d4e5f": "api-key: [REDACTED]",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----": "[REDACTED]",
    }
    for text, masked in leaked.items():
        assert redact_text(text) == masked, text


def test_ordinary_text_is_left_alone():
    for text in (
        "send your sk-ferro key as the Bearer token",
        "Bearer header missing",
        "providers.openai.api_key: expected str, got int",
        "unknown field (expected one of api_key, base_url, headers)",
        "task-manager disk-partition",
        "max_tokens: 4096",
        "request 9f8e7d6c5b4a39281726 chat openai gpt-4o-mini",
    ):
        assert redact_text(text) == text


async def test_request_secrets_stay_with_their_request():
    first, second = _secret(), _secret()
    both = f"{first} {second}"
    seen: dict[str, str] = {}
    ready = asyncio.Event()

    async def serve(name: str, own: str) -> None:
        with request_secrets(own):
            await asyncio.sleep(0)
            if name == "a":
                ready.set()
            else:
                await ready.wait()  # both requests are in flight at once
            await asyncio.sleep(0.01)
            seen[name] = redact_text(both)
            seen[name + " bytes"] = redact_known(both.encode()).decode()

    await asyncio.gather(serve("a", first), serve("b", second))
    assert seen["a"] == f"{REDACTED} {second}" and seen["a bytes"] == f"{REDACTED} {second}"
    assert seen["b"] == f"{first} {REDACTED}" and seen["b bytes"] == f"{first} {REDACTED}"
    assert redact_text(both) == both, "nothing is left behind once a request is over"


def test_a_secret_found_during_the_request_joins_it():
    late = _secret()
    add_request_secret(late)  # outside a request: no effect, no error
    with request_secrets(None):
        add_request_secret(late)
        assert redact_text(f"got {late}") == f"got {REDACTED}"
        with request_secrets(_secret()):
            assert redact_text(f"got {late}") == f"got {REDACTED}", "an inner scope keeps the outer's"
    assert redact_text(f"got {late}") == f"got {late}"


def test_model_output_is_masked_by_value_only():
    key = _secret()
    register(key)
    chunk = f'data: {{"delta": {{"content": "use Bearer abc12345678 and sk-example123456 not {key}"}}}}\n\n'
    out = redact_known(chunk.encode()).decode()
    assert out == chunk.replace(key, REDACTED), "code samples in an answer pass untouched"
    large = b"0.0123456789," * 10_000 + key.encode()  # past the size where each value is searched alone
    assert redact_known(large) == large.replace(key.encode(), REDACTED.encode())
    assert redact_text(large.decode()).endswith(REDACTED)


def test_every_json_log_field_is_masked():
    key = _secret()
    register(key)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.redaction")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log_fields(
            log,
            logging.INFO,
            f"msg {key}",
            error=f"upstream: {key}",
            nested={"deep": [f"x {key}", 3, None]},
            obj=ValueError(key),
            count=2,
        )
    finally:
        log.removeHandler(handler)
    line = stream.getvalue()
    assert key not in line
    data = json.loads(line)
    assert data["error"] == f"upstream: {REDACTED}" and data["nested"] == {"deep": [f"x {REDACTED}", 3, None]}
    assert data["count"] == 2 and data["obj"] == REDACTED and data["msg"] == f"msg {REDACTED}"
    assert scrub is redact_text
    assert redact_obj({"a": (key, 1.5)}) == {"a": [REDACTED, 1.5]}


def test_config_errors_never_quote_a_secret():
    key = _secret()
    register(key)
    err = ConfigError([f"strategy.mode: expected one of 'single', got {key!r}"], "admin")
    assert key not in str(err) and key not in " ".join(err.errors)


def test_where_the_registry_gets_its_values():
    dsn_pw, redis_pw, ak, tok, hdr = _secret(), _secret(), _secret(), _secret(), _secret()
    env = {
        "OPENAI_API_KEY": "k-" + ak,
        "HF_TOKEN": "hf-" + tok,
        "ADMIN_BOOTSTRAP_KEY": "boot-" + ak,
        "REQUEST_LOG_STORE_DSN": f"postgresql://app:{dsn_pw}@db/logs",
        "REDIS_URL": f"redis://:{redis_pw}@cache:6379/0",
        "FOO_TOKEN_LIMIT": "100000000",  # a setting, not a secret
        "SOME_KEY_MODE": "disabled",
        "GOOGLE_KEY_FILE_PATH_KEY": "/var/run/secret/key.json",
        "HOME": "/root",
    }
    found = set(env_secrets(env))
    assert found == {"k-" + ak, "hf-" + tok, "boot-" + ak, dsn_pw, redis_pw}
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
    document = {
        "providers": {
            "mistral": {"api_key": ak, "base_url": "https://x/v1", "headers": {"X-Team": hdr}},
            "vertex": {"service_account_json": json.dumps({"private_key": pem, "client_email": "a@b"})},
            "bedrock": {"secret_access_key": tok, "region": "us-east-1"},
        },
        "mcp_servers": [{"name": "m", "url": f"https://u:{dsn_pw}@mcp/x?token={redis_pw}&mode=fast"}],
        "plugins": [{"name": "rate-limit", "config": {"dsn": f"redis://:{hdr}@r/0", "key_prefix": "rl:"}}],
        "intercept": {"ca_key": "/etc/ferro/ca.key"},
    }
    found = set(document_secrets(document))
    assert {ak, hdr, tok, dsn_pw, redis_pw} <= found
    assert pem in found
    assert not found & {"https://x/v1", "us-east-1", "fast", "rl:", "/etc/ferro/ca.key", "a@b"}


def test_rotating_secrets_keep_only_the_last_two_generations() -> None:
    from ferro_proxy import redaction

    before = redaction.registered_count()
    tokens = [f"session-token-generation-{i:04d}-abcdef" for i in range(50)]
    for token in tokens:
        redaction.register_rotating("test:rotating-slot", token)
    assert redaction.registered_count() <= before + 2 * 3  # two generations, each with its quoted forms
    assert redaction.redact_text(f"x {tokens[-1]} y") == f"x {redaction.REDACTED} y"
    assert redaction.redact_text(f"x {tokens[-2]} y") == f"x {redaction.REDACTED} y"
    assert tokens[0] in redaction.redact_text(f"x {tokens[0]} y")  # forgotten, by design
