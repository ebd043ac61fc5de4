"""A fake Bedrock runtime on loopback: Converse, ConverseStream (binary AWS event stream)
and InvokeModel for Titan/Cohere embeddings and Titan Image / Nova Canvas.

It checks every request's SigV4 Authorization header by recomputing it with the secret
(an independent implementation of the signing steps, not the gateway's module), including
`X-Amz-Security-Token` when `session_token` is set; a `Bearer` header (a Bedrock API key)
is accepted only when it equals `bearer_token`. It also
validates Converse bodies the way the real API does (ValidationException, HTTP 400):
unknown fields, roles other than user/assistant, turns that do not alternate or start with
the assistant, blank text, toolUse/toolResult without a toolConfig, bad image formats.

Shapes follow the Bedrock runtime API reference. `fake.script` steers one request each:
`{"status": 429, "error_type": "ThrottlingException", "message": ...}`,
`{"stream_exception": "throttlingException"}`, `{"cut_after": n}` (stop mid-stream).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import orjson
from aiohttp import web

from providers.aws_eventstream import encode_message

_CONVERSE_FIELDS = {
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "promptVariables",
    "requestMetadata",
    "performanceConfig",
}
_INFERENCE_FIELDS = {"maxTokens", "temperature", "topP", "stopSequences"}
_BLOCK_KINDS = {
    "text",
    "image",
    "document",
    "video",
    "toolUse",
    "toolResult",
    "guardContent",
    "cachePoint",
    "reasoningContent",
}


class Rejected(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


@dataclass
class FakeBedrock:
    access_key_id: str = "AKIDFAKEBEDROCK"
    secret_access_key: str = "fake/secret+key"
    session_token: str | None = None
    bearer_token: str | None = None  # a Bedrock API key: `Authorization: Bearer <key>` instead of SigV4
    region: str = "us-east-1"
    reply_text: str = "Hello from fake Bedrock."
    script: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0
    image_png: bytes = b"\x89PNG\r\n\x1a\nfakepng"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeBedrock:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/model/{model_id}/converse", self.converse)
        app.router.add_post("/model/{model_id}/converse-stream", self.converse_stream)
        app.router.add_post("/model/{model_id}/invoke", self.invoke)
        app.router.add_get("/assets/cat.png", self.asset)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # ---------------------------------------------------------------- SigV4 check

    def _verify_signature(self, request: web.Request, body: bytes) -> None:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            if self.bearer_token is None or not hmac.compare_digest(auth[7:], self.bearer_token):
                raise Rejected(403, "UnrecognizedClientException", "Invalid API Key format")
            return
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            raise Rejected(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        fields = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 ") :].split(","))
        access, date, region, service, terminator = fields["Credential"].split("/")
        if access != self.access_key_id:
            raise Rejected(
                403, "UnrecognizedClientException", "The security token included in the request is invalid."
            )
        if (region, service, terminator) != (self.region, "bedrock", "aws4_request"):
            raise Rejected(
                403, "InvalidSignatureException", f"Credential should be scoped to a valid region {region}"
            )
        stamp = request.headers.get("X-Amz-Date", "")
        if stamp[:8] != date:
            raise Rejected(
                403, "InvalidSignatureException", "Date in Credential scope does not match X-Amz-Date"
            )
        signed = fields["SignedHeaders"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            raise Rejected(403, "InvalidSignatureException", "host and x-amz-date must be signed")
        if self.session_token is not None:
            if (
                request.headers.get("X-Amz-Security-Token") != self.session_token
                or "x-amz-security-token" not in signed
            ):
                raise Rejected(
                    403,
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.",
                )
        # Canonical request: the path as received, each segment encoded once more.
        path = request.raw_path.split("?")[0]
        canonical_path = "/".join(quote(seg, safe="-_.~") for seg in path.split("/"))
        query = "&".join(
            sorted(
                f"{quote(unquote(k), safe='-_.~')}={quote(unquote(v), safe='-_.~')}"
                for k, _, v in (p.partition("=") for p in request.query_string.split("&") if p)
            )
        )
        header_lines = "".join(f"{h}:{' '.join(request.headers.get(h, '').split())}\n" for h in signed)
        creq = "\n".join(
            (
                request.method,
                canonical_path,
                query,
                header_lines,
                ";".join(signed),
                hashlib.sha256(body).hexdigest(),
            )
        )
        scope = f"{date}/{region}/{service}/aws4_request"
        sts = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(creq.encode()).hexdigest()}"
        key = _hmac(
            _hmac(_hmac(_hmac(("AWS4" + self.secret_access_key).encode(), date), region), service),
            "aws4_request",
        )
        expected = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, fields.get("Signature", "")):
            raise Rejected(
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )

    @staticmethod
    def _error(status: int, error_type: str, message: str) -> web.Response:
        return web.json_response(
            {"message": message},
            status=status,
            headers={
                "x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"
            },
        )

    async def _accept(self, request: web.Request) -> tuple[dict[str, Any], Recorded]:
        raw = await request.read()
        self._verify_signature(request, raw)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Rejected(
                400, "ValidationException", "Malformed input request, please reformat your input."
            ) from None
        rec = Recorded(request.raw_path, dict(request.headers), body)
        self.requests.append(rec)
        return body, rec

    def _behaviour(self) -> dict[str, Any]:
        b = self.script.pop(0) if self.script else {}
        if b.get("status"):
            raise Rejected(
                b["status"], b.get("error_type", "InternalServerException"), b.get("message", "fake failure")
            )
        return b

    # ---------------------------------------------------------------- validation

    @staticmethod
    def _validate_converse(body: dict[str, Any]) -> None:
        def bad(msg: str) -> Rejected:
            return Rejected(400, "ValidationException", msg)

        unknown = set(body) - _CONVERSE_FIELDS
        if unknown:
            raise bad(f"Malformed input request: extraneous key [{sorted(unknown)[0]}] is not permitted")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad("The model returned the following errors: messages: at least one message is required")
        if messages[0].get("role") != "user":
            raise bad(
                "A conversation must start with a user message. Try again with a conversation that starts with a user message."
            )
        tool_ids: set[str] = set()
        for i, m in enumerate(messages):
            role = m.get("role")
            if role not in ("user", "assistant"):
                raise bad(f"Value '{role}' at 'messages.{i + 1}.member.role' failed to satisfy constraint")
            if i and messages[i - 1].get("role") == role:
                raise bad("A conversation must alternate between user and assistant roles.")
            content = m.get("content")
            if not isinstance(content, list) or not content:
                raise bad(f"messages.{i}.content: at least one content block is required")
            for block in content:
                if len(block) != 1 or next(iter(block)) not in _BLOCK_KINDS:
                    raise bad(f"messages.{i}: invalid content block {sorted(block)}")
                if "text" in block and not str(block["text"]).strip():
                    raise bad(
                        "The text field in the ContentBlock object is blank. Add text to the text field, and try again."
                    )
                if "image" in block:
                    image = block["image"]
                    if image.get("format") not in ("png", "jpeg", "gif", "webp"):
                        raise bad(f"messages.{i}: invalid image format {image.get('format')!r}")
                    try:
                        base64.b64decode(image["source"]["bytes"], validate=True)
                    except (KeyError, ValueError, TypeError):
                        raise bad(f"messages.{i}: image source bytes must be base64") from None
                if "toolUse" in block:
                    if role != "assistant":
                        raise bad("toolUse blocks are only allowed in assistant messages")
                    tool_ids.add(block["toolUse"]["toolUseId"])
                    if not isinstance(block["toolUse"].get("input"), dict):
                        raise bad("toolUse.input must be a JSON object")
                if "toolResult" in block and block["toolResult"].get("toolUseId") not in tool_ids:
                    raise bad("The toolResult blocks must follow a toolUse block with the same toolUseId.")
        if tool_ids and "toolConfig" not in body:
            raise bad(
                "The toolConfig field must be defined when using toolUse and toolResult content blocks."
            )
        unknown_cfg = set(body.get("inferenceConfig") or {}) - _INFERENCE_FIELDS
        if unknown_cfg:
            raise bad(f"Malformed input request: extraneous key [{sorted(unknown_cfg)[0]}] is not permitted")
        for s in body.get("system") or []:
            if set(s) - {"text", "guardContent", "cachePoint"}:
                raise bad("system blocks must be text, guardContent or cachePoint")

    # ---------------------------------------------------------------- answers

    def _answer_blocks(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        """Content blocks and stopReason: a tool call when tools are offered and the last
        user turn carries no tool result, else text."""
        tools = (body.get("toolConfig") or {}).get("tools") or []
        last = body["messages"][-1]
        answered = any("toolResult" in b for b in last["content"])
        if tools and not answered:
            forced = ((body["toolConfig"].get("toolChoice") or {}).get("tool") or {}).get("name")
            name = forced or tools[0]["toolSpec"]["name"]
            tool_input = {"answer": "forty-two"} if forced else {"city": "Paris"}
            return [
                {"toolUse": {"toolUseId": "tooluse_fake1", "name": name, "input": tool_input}}
            ], "tool_use"
        return [{"text": self.reply_text}], "end_turn"

    @staticmethod
    def _usage() -> dict[str, int]:
        return {
            "inputTokens": 11,
            "outputTokens": 6,
            "totalTokens": 21,
            "cacheReadInputTokens": 4,
            "cacheWriteInputTokens": 0,
        }

    async def converse(self, request: web.Request) -> web.StreamResponse:
        try:
            body, _ = await self._accept(request)
            self._validate_converse(body)
            self._behaviour()
        except Rejected as r:
            return self._error(r.status, r.error_type, r.message)
        blocks, stop = self._answer_blocks(body)
        return web.json_response(
            {
                "output": {"message": {"role": "assistant", "content": blocks}},
                "stopReason": stop,
                "usage": self._usage(),
                "metrics": {"latencyMs": 123},
            },
            headers={"x-amzn-RequestId": "req-fake-1"},
        )

    @staticmethod
    def _event(event_type: str, payload: dict[str, Any]) -> bytes:
        payload = {**payload, "p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"[: 5 + len(event_type)]}
        return encode_message(
            {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
            orjson.dumps(payload),
        )

    async def converse_stream(self, request: web.Request) -> web.StreamResponse:
        try:
            body, _ = await self._accept(request)
            self._validate_converse(body)
            b = self._behaviour()
        except Rejected as r:
            return self._error(r.status, r.error_type, r.message)
        blocks, stop = self._answer_blocks(body)
        events = [self._event("messageStart", {"role": "assistant"})]
        if "toolUse" in blocks[0]:
            use = blocks[0]["toolUse"]
            args = orjson.dumps(use["input"]).decode()
            events.append(
                self._event(
                    "contentBlockStart",
                    {
                        "contentBlockIndex": 0,
                        "start": {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}},
                    },
                )
            )
            for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
                events.append(
                    self._event(
                        "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": piece}}}
                    )
                )
        else:
            words = self.reply_text.split(" ")
            for i, word in enumerate(words):
                text = word if i == len(words) - 1 else word + " "
                events.append(
                    self._event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}})
                )
        events.append(self._event("contentBlockStop", {"contentBlockIndex": 0}))
        events.append(self._event("messageStop", {"stopReason": stop}))
        events.append(self._event("metadata", {"usage": self._usage(), "metrics": {"latencyMs": 99}}))
        if b.get("stream_exception"):
            events.insert(
                2,
                encode_message(
                    {
                        ":exception-type": b["stream_exception"],
                        ":content-type": "application/json",
                        ":message-type": "exception",
                    },
                    orjson.dumps({"message": "Too many requests, please wait before trying again."}),
                ),
            )
            events = events[:3]
        resp = web.StreamResponse(
            headers={"Content-Type": "application/vnd.amazon.eventstream", "x-amzn-RequestId": "req-fake-2"}
        )
        await resp.prepare(request)
        wire = b"".join(events)
        cut = b.get("cut_after")
        if cut is not None:
            wire = b"".join(events[:cut]) + events[cut][:7]
        # Split at odd offsets so frames straddle TCP writes.
        for i in range(0, len(wire), 37):
            await resp.write(wire[i : i + 37])
        if cut is not None:
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write_eof()
        return resp

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        model = unquote(request.match_info["model_id"])
        try:
            body, _ = await self._accept(request)
            self._behaviour()
            if "titan-embed" in model:
                return self._titan_embed(model, body)
            if "cohere.embed" in model:
                return self._cohere_embed(body)
            if "titan-image-generator" in model or "nova-canvas" in model:
                return self._image(body)
            raise Rejected(404, "ResourceNotFoundException", f"Model {model} not found")
        except Rejected as r:
            return self._error(r.status, r.error_type, r.message)

    def _titan_embed(self, model: str, body: dict[str, Any]) -> web.Response:
        allowed = (
            {"inputText", "dimensions", "normalize", "embeddingTypes"} if "v2" in model else {"inputText"}
        )
        if set(body) - allowed or not isinstance(body.get("inputText"), str):
            raise Rejected(
                400, "ValidationException", f"Malformed input request: {sorted(set(body) - allowed)}"
            )
        dims = body.get("dimensions", 1024)
        if dims not in (256, 512, 1024):
            raise Rejected(400, "ValidationException", "dimensions must be one of 256, 512, 1024")
        seed = len(body["inputText"])
        return web.json_response(
            {"embedding": [seed / 10, 0.5, -0.25] + [0.0] * (dims - 3), "inputTextTokenCount": seed}
        )

    def _cohere_embed(self, body: dict[str, Any]) -> web.Response:
        texts = body.get("texts")
        if not isinstance(texts, list) or not texts or len(texts) > 96:
            raise Rejected(400, "ValidationException", "texts must hold 1 to 96 strings")
        if body.get("input_type") not in ("search_document", "search_query", "classification", "clustering"):
            raise Rejected(400, "ValidationException", "input_type is required")
        return web.json_response(
            {
                "id": "emb-fake",
                "response_type": "embeddings_floats",
                "texts": texts,
                "embeddings": [[len(t) / 10, 0.1, 0.2] for t in texts],
            },
            headers={"X-Amzn-Bedrock-Input-Token-Count": str(sum(len(t.split()) for t in texts))},
        )

    def _image(self, body: dict[str, Any]) -> web.Response:
        if body.get("taskType") != "TEXT_IMAGE" or not (body.get("textToImageParams") or {}).get("text"):
            raise Rejected(
                400, "ValidationException", "taskType TEXT_IMAGE with textToImageParams.text is required"
            )
        n = (body.get("imageGenerationConfig") or {}).get("numberOfImages", 1)
        return web.json_response({"images": [base64.b64encode(self.image_png).decode()] * n, "error": None})

    async def asset(self, request: web.Request) -> web.Response:
        """An image on the web, for image_url inputs given as http URLs."""
        return web.Response(body=self.image_png, content_type="image/png")
