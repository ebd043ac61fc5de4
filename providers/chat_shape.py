"""Type checks of an OpenAI chat body before a native adapter translates it.

OpenAI-compatible upstreams judge a malformed body themselves (their 400 reaches the client).
A translating adapter reads the fields itself, so a wrong type (`"stop": 5`, a message that is
a string, `"tools": "x"`) would fail inside the translation as a 500 internal error; this
turns those into the 400 OpenAI would answer. Only types are checked: one pass over the
messages, nothing re-encoded.
"""

from __future__ import annotations

from typing import Any

from ferro_proxy.errors import bad_request


def check_chat_shape(body: dict[str, Any]) -> None:
    for i, msg in enumerate(body.get("messages") or ()):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise bad_request(
                f"messages[{i}] must be an object with a 'role'", code="invalid_type", param=f"messages[{i}]"
            )
        content = msg.get("content")
        if content is not None and not isinstance(content, str):
            if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
                raise bad_request(
                    f"messages[{i}].content must be a string or an array of content parts",
                    code="invalid_type",
                    param=f"messages[{i}].content",
                )
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str):
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise bad_request(
                "'stop' must be a string or an array of strings", code="invalid_type", param="stop"
            )
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool)):
        raise bad_request("'n' must be an integer", code="invalid_type", param="n")
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise bad_request("'tools' must be an array of tool objects", code="invalid_type", param="tools")
