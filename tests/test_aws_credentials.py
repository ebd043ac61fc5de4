"""The AWS credential chain for Bedrock: web identity (STS), EKS Pod Identity / ECS container
credentials, IMDSv2 and Bedrock API keys, each against a loopback fake of its endpoint, with
the fake Bedrock checking the SigV4 signature, the access key id and the session token of
every Converse call. Nothing here may reach 169.254.x: the default link-local endpoints are
pointed at a closed loopback port for every test.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp
import openai
import pytest

from ferro_proxy import redaction
from ferro_proxy.config import ConfigError, ProviderSettings, config_from_data
from ferro_proxy.gateway import Gateway
from providers import aws_credentials as awsc
from tests.fakes.aws_identity import FakeContainerCredentials, FakeIMDS, FakeSTS, Issued
from tests.fakes.bedrock_upstream import FakeBedrock

PROVIDERS_COVERED = {"bedrock"}
MODEL = "anthropic.claude-3-5-sonnet-20241022-v2:0"
CLOSED = "http://127.0.0.1:9"  # discard port: connection refused, never a metadata service


@pytest.fixture(autouse=True)
def _no_link_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(awsc, "CONTAINER_BASE", CLOSED)
    monkeypatch.setattr(awsc, "IMDS_ENDPOINT", CLOSED)
    monkeypatch.setattr(awsc, "IMDS_ENDPOINT_IPV6", CLOSED)


@pytest.fixture
async def bedrock():
    fake = await FakeBedrock(access_key_id="unset", secret_access_key="unset").start()
    yield fake
    await fake.stop()


def accept(bedrock: FakeBedrock):
    """on_issue hook: the fake Bedrock accepts only the credentials issued last."""

    def hook(c: Issued) -> None:
        bedrock.access_key_id, bedrock.secret_access_key, bedrock.session_token = (
            c.access_key_id,
            c.secret_access_key,
            c.session_token,
        )

    return hook


@pytest.fixture
async def fakes():
    made: list = []

    async def make(fake):
        made.append(await fake.start())
        return made[-1]

    yield make
    for fake in made:
        await fake.stop()


def client_for(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="unused", base_url=gw.proxy_url + "/v1", max_retries=0)


async def chat(client: openai.AsyncOpenAI) -> str:
    resp = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    return resp.choices[0].message.content or ""


def bedrock_env(bedrock: FakeBedrock, **extra: str) -> dict[str, str]:
    return {"AWS_REGION": bedrock.region, "BEDROCK_BASE_URL": bedrock.base_url, **extra}


def provider(gw):
    return gw.gateway.providers["bedrock"]


async def wait_for(predicate, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------ web identity (IRSA)


def web_identity_env(bedrock: FakeBedrock, sts: FakeSTS, token_file: Path, **extra: str) -> dict[str, str]:
    return bedrock_env(
        bedrock,
        AWS_ROLE_ARN=sts.role_arn,
        AWS_WEB_IDENTITY_TOKEN_FILE=str(token_file),
        AWS_ROLE_SESSION_NAME="shop-pod-1",
        AWS_ENDPOINT_URL_STS=sts.url,
        **extra,
    )


async def test_web_identity_credentials_sign_converse(gateway_factory, bedrock, fakes, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.sig-one\n")
    sts = await fakes(FakeSTS(on_issue=accept(bedrock), web_identity_token=token_file.read_text().strip()))
    gw = await gateway_factory(env=web_identity_env(bedrock, sts, token_file))

    assert await chat(client_for(gw)) == bedrock.reply_text
    form = sts.requests[0]["form"]
    assert form == {
        "Action": "AssumeRoleWithWebIdentity",
        "Version": "2011-06-15",
        "RoleArn": sts.role_arn,
        "RoleSessionName": "shop-pod-1",
        "WebIdentityToken": token_file.read_text().strip(),
    }
    assert "Authorization" not in sts.requests[0]["headers"]
    issued = sts.issued[-1]
    sent = bedrock.requests[-1].headers
    assert f"Credential={issued.access_key_id}/" in sent["Authorization"]
    assert sent["X-Amz-Security-Token"] == issued.session_token
    assert "x-amz-security-token" in sent["Authorization"]  # signed, not only sent
    assert provider(gw).health()["auth"] == "web_identity"
    # what STS handed out is a secret the gateway holds now
    assert redaction.redact_text(f"x {issued.secret_access_key} {issued.session_token}") == (
        f"x {redaction.REDACTED} {redaction.REDACTED}"
    )


async def test_first_fetch_starts_with_the_gateway_and_is_shared(gateway_factory, bedrock, fakes, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("projected-token-1")
    sts = await fakes(FakeSTS(on_issue=accept(bedrock), web_identity_token="projected-token-1", delay=0.3))
    gw = await gateway_factory(env=web_identity_env(bedrock, sts, token_file))
    await wait_for(lambda: len(sts.requests) == 1, timeout=2)  # before any request
    client = client_for(gw)
    answers = await asyncio.gather(*(chat(client) for _ in range(8)))
    assert answers == [bedrock.reply_text] * 8
    assert len(sts.requests) == 1  # one fetch in flight, shared by every waiting request


async def test_credentials_refresh_in_the_background_before_expiry(gateway_factory, bedrock, fakes, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("projected-token-1")
    sts = await fakes(FakeSTS(on_issue=accept(bedrock), web_identity_token="projected-token-1", lifetime=4))
    gw = await gateway_factory(env=web_identity_env(bedrock, sts, token_file))
    client = client_for(gw)
    assert await chat(client) == bedrock.reply_text
    first = sts.issued[0]

    # kubelet rotates the projected token; the refresh must read the new one
    token_file.write_text("projected-token-2")
    sts.web_identity_token = "projected-token-2"
    await wait_for(lambda: len(sts.issued) == 2)  # no request asked for it
    assert time.time() < awsc.parse_expiration(first.expiration)  # refreshed before expiry
    assert sts.requests[1]["form"]["WebIdentityToken"] == "projected-token-2"

    calls = len(sts.requests)
    assert await chat(client) == bedrock.reply_text  # the fake accepts only the new keys now
    assert f"Credential={sts.issued[1].access_key_id}/" in bedrock.requests[-1].headers["Authorization"]
    assert len(sts.requests) == calls  # the request did not wait on STS


async def test_a_failed_refresh_keeps_the_valid_credentials(
    gateway_factory, bedrock, fakes, tmp_path, caplog
):
    token_file = tmp_path / "token"
    token_file.write_text("projected-token-1")
    sts = await fakes(FakeSTS(on_issue=accept(bedrock), web_identity_token="projected-token-1", lifetime=5))
    gw = await gateway_factory(env=web_identity_env(bedrock, sts, token_file))
    client = client_for(gw)
    assert await chat(client) == bedrock.reply_text
    sts.fail_next = 1
    with caplog.at_level(logging.WARNING, logger="ferro_proxy.providers.aws_credentials"):
        await wait_for(lambda: len(sts.requests) == 2)
        await wait_for(lambda: any("failed" in r.getMessage() for r in caplog.records))
    assert len(sts.issued) == 1
    assert await chat(client) == bedrock.reply_text  # still signed with the first, valid keys
    warning = next(r.getMessage() for r in caplog.records if "failed" in r.getMessage())
    assert "stay in use" in warning and sts.issued[0].secret_access_key not in warning


async def test_sts_refusal_is_an_openai_shaped_502(gateway_factory, bedrock, fakes, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("a-token-sts-does-not-trust")
    sts = await fakes(FakeSTS(on_issue=accept(bedrock), web_identity_token="another"))
    gw = await gateway_factory(env=web_identity_env(bedrock, sts, token_file))
    with pytest.raises(openai.APIStatusError) as info:
        await chat(client_for(gw))
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_auth_error"
    assert "InvalidIdentityToken" in info.value.message and "a-token-sts" not in info.value.message
    assert bedrock.requests == []


@pytest.mark.parametrize(
    ("env", "region", "url"),
    [
        ({}, "eu-central-1", "https://sts.eu-central-1.amazonaws.com/"),
        ({"AWS_STS_REGIONAL_ENDPOINTS": "regional"}, "us-east-1", "https://sts.us-east-1.amazonaws.com/"),
        ({"AWS_STS_REGIONAL_ENDPOINTS": "legacy"}, "us-east-1", "https://sts.amazonaws.com/"),
        ({"AWS_STS_REGIONAL_ENDPOINTS": "legacy"}, "af-south-1", "https://sts.af-south-1.amazonaws.com/"),
        ({}, "cn-north-1", "https://sts.cn-north-1.amazonaws.com.cn/"),
        (
            {"AWS_ENDPOINT_URL_STS": "https://sts.internal.example"},
            "us-east-1",
            "https://sts.internal.example/",
        ),
    ],
)
def test_sts_endpoint(env, region, url):
    assert awsc.sts_endpoint(env, region) == url


def test_sts_xml_is_parsed_and_error_documents_and_doctypes_refused():
    ok = (
        b'<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        b"<AssumeRoleWithWebIdentityResult><Credentials><SessionToken>tok-123456789</SessionToken>"
        b"<SecretAccessKey>sec-123456789</SecretAccessKey><Expiration>2031-10-24T23:00:23Z</Expiration>"
        b"<AccessKeyId>ASIAEXAMPLE</AccessKeyId></Credentials></AssumeRoleWithWebIdentityResult>"
        b"</AssumeRoleWithWebIdentityResponse>"
    )
    got = awsc.parse_sts_xml(ok)
    assert (got.credentials.access_key_id, got.credentials.session_token) == ("ASIAEXAMPLE", "tok-123456789")
    assert got.expires_at == awsc.parse_expiration("2031-10-24T23:00:23+00:00")
    error = b"<ErrorResponse><Error><Code>ExpiredTokenException</Code><Message>Token expired</Message></Error></ErrorResponse>"
    with pytest.raises(awsc.CredentialError, match="ExpiredTokenException: Token expired"):
        awsc.parse_sts_xml(error)
    with pytest.raises(awsc.CredentialError, match="document type"):
        awsc.parse_sts_xml(b'<!DOCTYPE x [<!ENTITY a "aaaa">]>' + ok)


# ------------------------------------------------------------------ EKS Pod Identity / ECS


async def test_pod_identity_credentials_sign_converse(gateway_factory, bedrock, fakes, tmp_path):
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text("pod-identity-token-1\n")
    agent = await fakes(
        FakeContainerCredentials(on_issue=accept(bedrock), authorization="pod-identity-token-1")
    )
    env = bedrock_env(
        bedrock,
        AWS_CONTAINER_CREDENTIALS_FULL_URI=agent.url + agent.path,
        AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token_file),
    )
    gw = await gateway_factory(env=env)
    assert await chat(client_for(gw)) == bedrock.reply_text
    assert agent.requests[0]["headers"]["Authorization"] == "pod-identity-token-1"
    sent = bedrock.requests[-1].headers
    assert f"Credential={agent.issued[-1].access_key_id}/" in sent["Authorization"]
    assert sent["X-Amz-Security-Token"] == agent.issued[-1].session_token
    assert provider(gw).health()["auth"] == "container"


async def test_container_token_file_is_read_on_every_fetch(fakes, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("token-one")
    agent = await fakes(FakeContainerCredentials(authorization="token-one"))
    source = awsc.ContainerSource(agent.url + agent.path, None, str(token_file))
    async with aiohttp.ClientSession() as session:
        first = await source.fetch(session)
        token_file.write_text("token-two")
        with pytest.raises(awsc.CredentialError, match="403"):
            await source.fetch(session)  # the agent still expects the old one: the new one was sent
        agent.authorization = "token-two"
        second = await source.fetch(session)
    assert first.credentials.access_key_id != second.credentials.access_key_id
    assert [r["headers"]["Authorization"] for r in agent.requests] == ["token-one", "token-two", "token-two"]


async def test_ecs_relative_uri_with_token_variable(gateway_factory, bedrock, fakes, monkeypatch):
    agent = await fakes(
        FakeContainerCredentials(
            on_issue=accept(bedrock), path="/v2/credentials/task-1", authorization="ecs-tok"
        )
    )
    monkeypatch.setattr(awsc, "CONTAINER_BASE", agent.url)  # stands in for http://169.254.170.2
    env = bedrock_env(
        bedrock,
        AWS_CONTAINER_CREDENTIALS_RELATIVE_URI="/v2/credentials/task-1",
        AWS_CONTAINER_AUTHORIZATION_TOKEN="ecs-tok",
    )
    gw = await gateway_factory(env=env)
    assert await chat(client_for(gw)) == bedrock.reply_text
    assert agent.requests[0]["path"] == "/v2/credentials/task-1"


async def test_wrong_container_token_is_a_502(gateway_factory, bedrock, fakes):
    agent = await fakes(FakeContainerCredentials(on_issue=accept(bedrock), authorization="right"))
    env = bedrock_env(
        bedrock,
        AWS_CONTAINER_CREDENTIALS_FULL_URI=agent.url + agent.path,
        AWS_CONTAINER_AUTHORIZATION_TOKEN="wrong-token",
    )
    gw = await gateway_factory(env=env)
    with pytest.raises(openai.APIStatusError) as info:
        await chat(client_for(gw))
    assert info.value.status_code == 502 and "403" in info.value.message
    assert "wrong-token" not in info.value.message


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:1234/creds", True),
        ("http://localhost/creds", True),
        ("http://169.254.170.23/v1/credentials", True),
        ("http://[fd00:ec2::23]/v1/credentials", True),
        ("https://creds.example.com/v1", True),
        ("http://10.0.0.5/creds", False),
        ("http://creds.example.com/v1", False),
        ("ftp://127.0.0.1/creds", False),
    ],
)
def test_full_uri_rule(url, ok):
    if ok:
        awsc.check_container_url(url)
    else:
        with pytest.raises(ValueError):
            awsc.check_container_url(url)


def test_a_disallowed_full_uri_is_refused_at_load(bedrock):
    env = bedrock_env(bedrock, AWS_CONTAINER_CREDENTIALS_FULL_URI="http://10.1.2.3/creds")
    with pytest.raises(ConfigError, match="AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        Gateway(env).check(config_from_data({}, env=env))


# ------------------------------------------------------------------ IMDSv2


async def test_imds_v2_credentials_sign_converse(gateway_factory, bedrock, fakes):
    imds = await fakes(FakeIMDS(on_issue=accept(bedrock)))
    gw = await gateway_factory(env=bedrock_env(bedrock, AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url))
    assert await chat(client_for(gw)) == bedrock.reply_text
    steps = [(r["method"], r["path"]) for r in imds.requests]
    assert steps == [
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/meta-data/iam/security-credentials/"),
        ("GET", f"/latest/meta-data/iam/security-credentials/{imds.role}"),
    ]
    assert imds.requests[0]["headers"]["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
    assert all(r["headers"]["X-aws-ec2-metadata-token"] in imds.tokens for r in imds.requests[1:])
    sent = bedrock.requests[-1].headers
    assert f"Credential={imds.issued[-1].access_key_id}/" in sent["Authorization"]
    assert sent["X-Amz-Security-Token"] == imds.issued[-1].session_token


async def test_fake_imds_refuses_a_get_without_the_session_token(fakes):
    imds = await fakes(FakeIMDS())
    async with aiohttp.ClientSession() as session:
        async with session.get(imds.url + "/latest/meta-data/iam/security-credentials/") as resp:
            assert resp.status == 401
        async with session.put(imds.url + "/latest/api/token") as resp:
            assert resp.status == 400  # no TTL header


async def test_imds_is_used_only_when_asked(gateway_factory, bedrock, fakes, monkeypatch):
    imds = await fakes(FakeIMDS(on_issue=accept(bedrock)))
    monkeypatch.setattr(awsc, "IMDS_ENDPOINT", imds.url)  # where 169.254.169.254 would be
    # AWS_REGION alone: enabled as before, but never probes the instance metadata service
    gw = await gateway_factory(env=bedrock_env(bedrock))
    with pytest.raises(openai.APIStatusError) as info:
        await chat(client_for(gw))
    assert info.value.status_code == 500 and "credentials: imds" in info.value.message
    assert imds.requests == []
    # `credentials: imds` opts in
    config = {"providers": {"bedrock": {"credentials": "imds"}}}
    gw = await gateway_factory(config, env=bedrock_env(bedrock))
    assert await chat(client_for(gw)) == bedrock.reply_text
    assert imds.requests[0]["method"] == "PUT"


def test_imds_disabled_by_variable():
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9", "AWS_EC2_METADATA_DISABLED": "true"}
    assert awsc.configured_kind(env) is None
    with pytest.raises(ValueError, match="AWS_EC2_METADATA_DISABLED"):
        awsc.select(env, ProviderSettings(credentials="imds"), "us-east-1")


# ------------------------------------------------------------------ Bedrock API keys


async def test_bearer_token_mode(gateway_factory, bedrock):
    bedrock.bearer_token = "ABSKQmVkcm9ja0FQSUtleS1fake-bedrock-api-key"
    gw = await gateway_factory(env=bedrock_env(bedrock, AWS_BEARER_TOKEN_BEDROCK=bedrock.bearer_token))
    assert await chat(client_for(gw)) == bedrock.reply_text
    sent = bedrock.requests[-1].headers
    assert sent["Authorization"] == f"Bearer {bedrock.bearer_token}"
    assert "X-Amz-Date" not in sent and "X-Amz-Security-Token" not in sent
    assert provider(gw).health()["auth"] == "bearer"
    assert bedrock.bearer_token not in redaction.redact_text(f"key {bedrock.bearer_token}")


async def test_a_wrong_bedrock_api_key_is_refused_by_the_upstream(gateway_factory, bedrock):
    bedrock.bearer_token = "the-right-bedrock-api-key"
    gw = await gateway_factory(env=bedrock_env(bedrock, AWS_BEARER_TOKEN_BEDROCK="a-wrong-bedrock-api-key"))
    with pytest.raises(openai.APIStatusError) as info:
        await chat(client_for(gw))
    assert info.value.status_code == 502 and info.value.body["code"] == "upstream_auth_error"


# ------------------------------------------------------------------ the chain


def test_chain_order_and_enabling():
    static = {"AWS_ACCESS_KEY_ID": "AKIDX", "AWS_SECRET_ACCESS_KEY": "s" * 20}
    bearer = {"AWS_BEARER_TOKEN_BEDROCK": "b" * 20}
    web = {"AWS_ROLE_ARN": "arn:aws:iam::1:role/r", "AWS_WEB_IDENTITY_TOKEN_FILE": "/tmp/t"}
    container = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:1/c"}
    imds = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"}
    kind = awsc.configured_kind
    assert kind({**static, **bearer, **web, **container, **imds}) == "static"
    assert kind({**bearer, **web, **container, **imds}) == "bearer"
    assert kind({**web, **container, **imds}) == "web_identity"
    assert kind({**container, **imds}) == "container"
    assert kind(imds) == "imds"
    assert kind({"AWS_ACCESS_KEY_ID": "AKIDX"}) is None  # half a key pair is nothing
    assert kind({"AWS_ROLE_ARN": "arn:aws:iam::1:role/r"}) is None
    assert kind({**static, **web}, ProviderSettings(credentials="web_identity")) == "web_identity"
    from providers.registry import load_builtin_providers

    spec = load_builtin_providers()["bedrock"]
    assert spec.enabled_by_env(web) and spec.enabled_by_env(container) and spec.enabled_by_env(bearer)
    assert spec.enabled_by_env({"AWS_REGION": "us-east-1"})  # as before
    assert not spec.enabled_by_env({"AWS_ROLE_ARN": "arn:aws:iam::1:role/r"})


def test_a_bad_credentials_setting_is_refused_at_load():
    env: dict[str, str] = {}
    for value, message in (
        ("instance", "must be one of auto, static, bearer"),
        ("web_identity", "needs AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE"),
    ):
        config = config_from_data({"providers": {"bedrock": {"credentials": value}}}, env=env)
        with pytest.raises(ConfigError, match=message) as info:
            Gateway(env).check(config)
        assert "providers.bedrock.credentials" in str(info.value)
