"""pii-redact through real listeners: each entity's true positives are redacted before the
request leaves (checked on what the fake upstream received) and its near misses are not;
redact modes, per-entity actions, and redaction of answers, streamed ones included."""

from __future__ import annotations

import re

from tests.test_guardrail_common import ask, rejected, sent_text, start_guarded, streamed

CASES = [
    # (text, expected text at the upstream)
    ("mail me at jane.doe+ai@example.co.uk today", "mail me at [EMAIL] today"),
    ("near miss: user@localhost and @handle", "near miss: user@localhost and @handle"),
    ("call +44 20 7946 0958 or (555) 123-4567", "call [PHONE] or [PHONE]"),
    ("near miss: released 2024-01-15, build 12345", "near miss: released 2024-01-15, build 12345"),
    ("card 4111 1111 1111 1111 exp 12/30", "card [CREDIT_CARD] exp 12/30"),
    ("card 5500-0000-0000-0004!", "card [CREDIT_CARD]!"),
    ("near miss (Luhn-invalid): 4111 1111 1111 1112", "near miss (Luhn-invalid): 4111 1111 1111 1112"),
    ("ssn 123-45-6789", "ssn [SSN]"),
    ("near miss ssn: 000-12-3456 and 666-12-3456", "near miss ssn: 000-12-3456 and 666-12-3456"),
    ("host 192.168.10.20.", "host [IPV4]."),
    ("near miss: 256.1.1.1 and version 1.2.3", "near miss: 256.1.1.1 and version 1.2.3"),
    ("v6 2001:db8::8a2e:370:7334 here", "v6 [IPV6] here"),
    ("near miss: at 12:30:45 use std::vector", "near miss: at 12:30:45 use std::vector"),
    ("pay DE89 3704 0044 0532 0130 00 NOW", "pay [IBAN] NOW"),
    ("pay GB82WEST12345698765432", "pay [IBAN]"),
    (
        "near miss (bad checksum): DE89 3704 0044 0532 0130 01",
        "near miss (bad checksum): DE89 3704 0044 0532 0130 01",
    ),
    ("key AKIAIOSFODNN7EXAMPLE", "key [AWS_ACCESS_KEY]"),
    ("near miss: AKIAIOSFODNN7EXAMPL is short", "near miss: AKIAIOSFODNN7EXAMPL is short"),
    ("my passport number: X12345678 expires", "my passport number: [PASSPORT] expires"),
    ("near miss: passport photo requirements 2024", "near miss: passport photo requirements 2024"),
]


async def test_each_entity_true_positives_and_near_misses(gateway_factory, fake_openai):
    gw = await start_guarded(gateway_factory, fake_openai, {"name": "pii-redact"})
    for text, expected in CASES:
        await ask(gw, text)
        assert sent_text(fake_openai) == expected, text


async def test_mask_and_hash_modes(gateway_factory, fake_openai):
    gw = await start_guarded(
        gateway_factory, fake_openai, {"name": "pii-redact", "config": {"redact_mode": "mask"}}
    )
    await ask(gw, "card 4111-1111-1111-1111 mail a.b@example.com")
    assert sent_text(fake_openai) == "card ****-****-****-1111 mail *.*@*******.***"

    gw = await start_guarded(
        gateway_factory,
        fake_openai,
        {"name": "pii-redact", "config": {"redact_mode": "hash", "hash_key": "k1"}},
    )
    await ask(gw, "a.b@example.com and a.b@example.com and c@example.com")
    sent = sent_text(fake_openai)
    tokens = re.findall(r"\[EMAIL:([0-9a-f]{12})\]", sent)
    assert len(tokens) == 3 and tokens[0] == tokens[1] != tokens[2], sent
    assert "example.com" not in sent


async def test_per_entity_actions(gateway_factory, fake_openai):
    plugin = {
        "name": "pii-redact",
        "config": {
            "entities": ["email", "credit_card", "ipv4"],
            "entity_actions": {"credit_card": "block", "ipv4": "log"},
        },
    }
    gw = await start_guarded(gateway_factory, fake_openai, plugin)
    err = await rejected(gw, "charge 4111 1111 1111 1111 to bob@example.com")
    assert err.status_code == 400 and "credit_card" in err.body["message"]
    assert "4111" not in err.body["message"] and fake_openai.requests == []
    await ask(gw, "bob@example.com from 10.0.0.1, ssn 123-45-6789")
    assert sent_text(fake_openai) == "[EMAIL] from 10.0.0.1, ssn 123-45-6789"


async def test_answer_redaction_whole_and_streamed_across_chunks(gateway_factory, fake_openai):
    # The fake streams one word per chunk, so the card number and phone arrive in pieces.
    fake_openai.reply_text = "Card 4111 1111 1111 1111 and phone 555 123 4567 and mail x@example.org done."
    gw = await start_guarded(
        gateway_factory, fake_openai, {"name": "pii-redact", "config": {"apply_to": "output"}}
    )
    expected = "Card [CREDIT_CARD] and phone [PHONE] and mail [EMAIL] done."
    whole = await ask(gw, "hi")
    assert whole.choices[0].message.content == expected
    assert await streamed(gw) == expected


async def test_streamed_near_miss_passes_unchanged(gateway_factory, fake_openai):
    fake_openai.reply_text = "Order 4111 1111 1111 1112 shipped to 256.1.1.1 on 2024-01-15."
    gw = await start_guarded(
        gateway_factory, fake_openai, {"name": "pii-redact", "config": {"apply_to": "output"}}
    )
    assert await streamed(gw) == fake_openai.reply_text
