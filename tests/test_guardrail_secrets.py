"""secret-scan through real listeners: each rule blocks its true positive (without echoing it)
and lets its near miss through; redaction, custom patterns and streamed answers."""

from __future__ import annotations

import logging

from tests.test_guardrail_common import ask, metric_lines, rejected, sent_text, start_guarded, streamed

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n4lgOEePzNm0tRgeLezV6ffAt\n-----END RSA PRIVATE KEY-----"

TRUE_POSITIVES = {
    "aws_access_key": "use AKIAIOSFODNN7EXAMPLE please",
    "aws_secret_key": "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "openai_api_key": "my key is sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
    "anthropic_api_key": "sk-ant-api03-" + "Q" * 93 + "AA",
    "github_token": "token ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "gitlab_token": "glpat-xY12abCD34efGH56ijKL",
    "slack_token": "xoxb-2048-1234567890-AbCdEfGhIjKl",
    "slack_webhook": "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/abcdefGHIJKL1234mnop",
    "stripe_key": "sk_live_51HqLyjWDarjtT1zdp7dcXmpl",
    "huggingface_token": "hf_AbCdEfGhIjKlMnOpQrStUvWxYz12345678",
    "google_api_key": "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
    "private_key": "here:\n" + PEM,
    "database_url": "DATABASE_URL=postgresql://app:Zq8!vR2p@db.internal:5432/prod",
    "jwt": "Authorization token " + JWT,
    "high_entropy": "session=Xk9qP2mZ7vL4tR8wN3bY6cH1jF5dG0sA",
}

NEAR_MISSES = [
    "the sk-learn library and a task-specific model",
    "AKIA is a prefix; AKIAIOSFODNN7 is too short",
    "postgresql://app@db.internal/prod has no password",
    "postgres://user:password@localhost/db is the docs placeholder",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0 has no signature part",
    "a UUID 123e4567-e89b-12d3-a456-426614174000 is not a secret",
    "ThisIsAVeryLongCamelCaseIdentifierName",
    "-----BEGIN PUBLIC KEY----- is fine to share",
    "pk_live_51HqLyjWDarjtT1zdp7dcXmpl is a publishable key",
]


async def test_each_rule_blocks_without_echo_and_near_misses_pass(gateway_factory, fake_openai, caplog):
    gw = await start_guarded(gateway_factory, fake_openai, {"name": "secret-scan"})
    with caplog.at_level(logging.INFO, logger="ferro_proxy.guardrail"):
        for rule, text in TRUE_POSITIVES.items():
            err = await rejected(gw, text)
            assert err.status_code == 400 and err.body["code"] == "request_rejected", rule
            assert f"'{rule}'" in err.body["message"], (rule, err.body["message"])
            assert text[-12:] not in err.body["message"], rule
    assert fake_openai.requests == []
    logged = " ".join(str(r.fields) for r in caplog.records if r.name == "ferro_proxy.guardrail")
    assert "wJalrXUtnFEMI" not in logged and "ghp_16C7" not in logged
    for text in NEAR_MISSES:
        await ask(gw, text)
        assert sent_text(fake_openai) == text
    lines = await metric_lines(gw)
    assert any('rule="jwt"' in line and 'action="block"' in line for line in lines)


async def test_redact_keeps_the_rest_and_custom_patterns(gateway_factory, fake_openai):
    plugin = {
        "name": "secret-scan",
        "config": {
            "action": "redact",
            "entropy": False,
            "patterns": [{"name": "internal_token", "pattern": r"\bitk_[0-9a-f]{16}\b", "action": "block"}],
        },
    }
    gw = await start_guarded(gateway_factory, fake_openai, plugin)
    await ask(gw, "deploy with ghp_16C7e42F292c6912E7710c838347Ae178B4a and " + PEM + " thanks")
    assert sent_text(fake_openai) == "deploy with [REDACTED:github_token] and [REDACTED:private_key] thanks"
    err = await rejected(gw, "use itk_0123456789abcdef")
    assert "internal_token" in err.body["message"]
    await ask(gw, "itk_0123 is not one")
    assert sent_text(fake_openai) == "itk_0123 is not one"


async def test_secret_in_a_streamed_answer_is_redacted_even_split_across_chunks(gateway_factory, fake_openai):
    fake_openai.reply_text = "Connect with postgres://admin:Sup3rS3cret@10.1.2.3:5432/app then -----BEGIN PRIVATE KEY----- AAAA BBBB -----END PRIVATE KEY----- ok"
    plugin = {"name": "secret-scan", "config": {"action": "redact", "apply_to": "output"}}
    gw = await start_guarded(gateway_factory, fake_openai, plugin)
    assert await streamed(gw) == "Connect with [REDACTED:database_url]/app then [REDACTED:private_key] ok"
