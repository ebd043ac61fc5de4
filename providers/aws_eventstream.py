"""The binary `application/vnd.amazon.eventstream` framing, decoded incrementally.

A message is: total length (u32 BE), headers length (u32 BE), prelude CRC32 (of those 8
bytes), headers, payload, message CRC32 (of everything before it). A header is a 1-byte
name length, the name, a 1-byte type and a typed value. Bytes arrive in arbitrary slices;
`EventStreamDecoder.feed()` keeps the partial tail and returns every complete message.
`encode_message()` is the inverse (used by test fakes).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

_PRELUDE = 12
_MIN_MESSAGE = 16  # prelude + message CRC
# A message larger than this is not a Bedrock event: treat it as corruption, not a reason
# to buffer without bound.
MAX_MESSAGE_BYTES = 24 * 1024 * 1024


class EventStreamError(ValueError):
    """The byte stream is not valid event-stream framing (bad CRC, length or header)."""


@dataclass(slots=True)
class EventMessage:
    headers: dict[str, Any]
    payload: bytes

    @property
    def message_type(self) -> str:
        return str(self.headers.get(":message-type", "event"))

    @property
    def event_type(self) -> str | None:
        value = self.headers.get(":event-type")
        return str(value) if value is not None else None

    @property
    def exception_type(self) -> str | None:
        value = self.headers.get(":exception-type") or self.headers.get(":error-code")
        return str(value) if value is not None else None


def _parse_headers(data: bytes) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    i, end = 0, len(data)
    try:
        while i < end:
            name_len = data[i]
            name = data[i + 1 : i + 1 + name_len].decode("utf-8")
            i += 1 + name_len
            kind = data[i]
            i += 1
            value: Any
            if kind == 0:
                value = True
            elif kind == 1:
                value = False
            elif kind == 2:
                (value,) = struct.unpack_from(">b", data, i)
                i += 1
            elif kind == 3:
                (value,) = struct.unpack_from(">h", data, i)
                i += 2
            elif kind == 4:
                (value,) = struct.unpack_from(">i", data, i)
                i += 4
            elif kind in (5, 8):  # int64; timestamp (ms since epoch)
                (value,) = struct.unpack_from(">q", data, i)
                i += 8
            elif kind in (6, 7):  # bytes; string
                (length,) = struct.unpack_from(">H", data, i)
                raw = data[i + 2 : i + 2 + length]
                if len(raw) != length:
                    raise EventStreamError("header value runs past the headers block")
                value = raw if kind == 6 else raw.decode("utf-8")
                i += 2 + length
            elif kind == 9:
                raw = data[i : i + 16]
                if len(raw) != 16:
                    raise EventStreamError("uuid header runs past the headers block")
                value = uuid.UUID(bytes=raw)
                i += 16
            else:
                raise EventStreamError(f"unknown header value type {kind}")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise EventStreamError(f"malformed headers: {exc}") from None
    if i != end:
        raise EventStreamError("header values run past the headers block")
    return headers


class EventStreamDecoder:
    """Feed bytes, get complete messages. Raises EventStreamError on corrupt framing."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[EventMessage]:
        self._buf += data
        out: list[EventMessage] = []
        buf = self._buf
        start = 0
        while len(buf) - start >= _PRELUDE:
            total, headers_len, prelude_crc = struct.unpack_from(">III", buf, start)
            if zlib.crc32(buf[start : start + 8]) != prelude_crc:
                raise EventStreamError("prelude checksum mismatch")
            if total < _MIN_MESSAGE or total > MAX_MESSAGE_BYTES or headers_len > total - _MIN_MESSAGE:
                raise EventStreamError(f"impossible message length {total} (headers {headers_len})")
            if len(buf) - start < total:
                break
            end = start + total
            (message_crc,) = struct.unpack_from(">I", buf, end - 4)
            if zlib.crc32(buf[start : end - 4]) != message_crc:
                raise EventStreamError("message checksum mismatch")
            h_start = start + _PRELUDE
            headers = _parse_headers(bytes(buf[h_start : h_start + headers_len]))
            payload = bytes(buf[h_start + headers_len : end - 4])
            out.append(EventMessage(headers, payload))
            start = end
        if start:
            del buf[:start]
        return out

    @property
    def pending(self) -> int:
        """Bytes held that do not yet form a whole message (non-zero at EOF = truncated)."""
        return len(self._buf)


def _encode_header(name: str, value: Any) -> bytes:
    raw_name = name.encode()
    head = bytes([len(raw_name)]) + raw_name
    if value is True:
        return head + b"\x00"
    if value is False:
        return head + b"\x01"
    if isinstance(value, int):
        return head + b"\x04" + struct.pack(">i", value)
    if isinstance(value, bytes):
        return head + b"\x06" + struct.pack(">H", len(value)) + value
    raw = str(value).encode()
    return head + b"\x07" + struct.pack(">H", len(raw)) + raw


def encode_message(headers: dict[str, Any], payload: bytes) -> bytes:
    """One framed message (string, int32, bool and bytes header values)."""
    header_bytes = b"".join(_encode_header(k, v) for k, v in headers.items())
    total = _MIN_MESSAGE + len(header_bytes) + len(payload)
    prelude = struct.pack(">II", total, len(header_bytes))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + header_bytes + payload
    return body + struct.pack(">I", zlib.crc32(body))
