"""The event-stream decoder against AWS's published encoding test vectors
(aws-c-event-stream / SDK eventstream test suite), fed whole and byte by byte."""

from __future__ import annotations

import pytest

from providers.aws_eventstream import EventStreamDecoder, EventStreamError, encode_message

BODY = b"{'foo':'bar'}"
VECTORS = {
    "empty_message": (bytes([0, 0, 0, 16, 0, 0, 0, 0, 5, 194, 72, 235, 125, 152, 200, 255]), {}, b""),
    "int32_header": (
        bytes(
            [
                0,
                0,
                0,
                43,
                0,
                0,
                0,
                14,
                52,
                139,
                236,
                123,
                8,
                101,
                118,
                101,
                110,
                116,
                45,
                105,
                100,
                4,
                0,
                0,
                160,
                12,
                123,
                39,
                102,
                111,
                111,
                39,
                58,
                39,
                98,
                97,
                114,
                39,
                125,
                211,
                137,
                2,
                133,
            ]
        ),
        {"event-id": 0x0000A00C},
        BODY,
    ),
    "payload_no_headers": (
        bytes(
            [
                0,
                0,
                0,
                29,
                0,
                0,
                0,
                0,
                253,
                82,
                140,
                90,
                123,
                39,
                102,
                111,
                111,
                39,
                58,
                39,
                98,
                97,
                114,
                39,
                125,
                195,
                101,
                57,
                54,
            ]
        ),
        {},
        BODY,
    ),
    "payload_one_str_header": (
        bytes(
            [
                0,
                0,
                0,
                61,
                0,
                0,
                0,
                32,
                7,
                253,
                131,
                150,
                12,
                99,
                111,
                110,
                116,
                101,
                110,
                116,
                45,
                116,
                121,
                112,
                101,
                7,
                0,
                16,
                97,
                112,
                112,
                108,
                105,
                99,
                97,
                116,
                105,
                111,
                110,
                47,
                106,
                115,
                111,
                110,
                123,
                39,
                102,
                111,
                111,
                39,
                58,
                39,
                98,
                97,
                114,
                39,
                125,
                141,
                156,
                8,
                177,
            ]
        ),
        {"content-type": "application/json"},
        BODY,
    ),
}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_published_vectors_decode(name):
    encoded, headers, payload = VECTORS[name]
    (msg,) = EventStreamDecoder().feed(encoded)
    assert msg.headers == headers and msg.payload == payload


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_encoder_reproduces_published_vectors(name):
    encoded, headers, payload = VECTORS[name]
    assert encode_message(headers, payload) == encoded


def test_fed_one_byte_at_a_time_and_several_messages_per_slice():
    stream = b"".join(v[0] for v in VECTORS.values()) * 2
    decoder = EventStreamDecoder()
    got = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert [m.payload for m in got] == [v[2] for v in VECTORS.values()] * 2
    assert decoder.pending == 0
    whole = EventStreamDecoder().feed(stream)
    assert len(whole) == 8


def test_truncated_stream_leaves_pending_bytes():
    encoded = VECTORS["payload_one_str_header"][0]
    decoder = EventStreamDecoder()
    assert decoder.feed(encoded[:-3]) == []
    assert decoder.pending == len(encoded) - 3


@pytest.mark.parametrize(
    "corrupt",
    [
        # corrupted_headers: a header name byte changed (message CRC fails)
        lambda b: b[:20] + b"+" + b[21:],
        # corrupted_header_len: headers length changed (prelude CRC fails)
        lambda b: b[:6] + b"\x01" + b[7:],
        # corrupted_length
        lambda b: b"\x01" + b[1:],
        # corrupted_payload
        lambda b: b[:-6] + b"\x8d" + b[-5:],
    ],
)
def test_corrupted_vectors_are_rejected(corrupt):
    encoded = VECTORS["payload_one_str_header"][0]
    with pytest.raises(EventStreamError):
        EventStreamDecoder().feed(corrupt(encoded))


def test_bedrock_style_headers_are_read():
    raw = encode_message(
        {":event-type": "contentBlockDelta", ":content-type": "application/json", ":message-type": "event"},
        b'{"contentBlockIndex":0,"delta":{"text":"Hi"},"p":"abcd"}',
    )
    (msg,) = EventStreamDecoder().feed(raw)
    assert msg.event_type == "contentBlockDelta" and msg.message_type == "event"
