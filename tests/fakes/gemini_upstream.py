"""A fake Google Gen AI upstream on loopback: the Gemini API (`/v1beta/models/{m}:{method}`)
and Vertex AI (`/v1/projects/{p}/locations/{r}/publishers/google/models/{m}:{method}`).

Shapes follow Google's public REST reference: GenerateContentRequest/Response (contents with
roles user/model, parts text/inlineData/fileData/functionCall/functionResponse,
systemInstruction, generationConfig, usageMetadata), `streamGenerateContent?alt=sse` (one
`data:` event per GenerateContentResponse, the last with finishReason), batchEmbedContents,
Vertex/Imagen `predict`, and `{"error": {"code", "message", "status"}}` errors.

Validation mirrors what the real API rejects: unknown fields, a role other than user/model,
empty parts, a functionResponse turn that does not follow a functionCall turn, a missing or
wrong API key (or bearer token on Vertex), a batch request naming another model.
`fake.script` holds per-request behaviours (`{"status": 429, "retry_after": 3}`,
`{"cut_after": 1}`, `{"block": True}`); `fake.requests` records every call.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_upstream import Recorded

_REQUEST_FIELDS = {
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "tool_config",
    "generationConfig",
    "generation_config",
    "safetySettings",
    "safety_settings",
    "cachedContent",
    "labels",
}
_GENERATION_FIELDS = {
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "thinkingConfig",
    "responseModalities",
}
_PART_FIELDS = {
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "thought",
    "thoughtSignature",
}
_STATUS_NAME = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
# A 1x1 transparent PNG, as Imagen would return bytesBase64Encoded.
TINY_PNG_B64 = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
    )
).decode()


def google_error(
    status: int, message: str, headers: dict[str, str] | None = None, reason: str | None = None
) -> web.Response:
    body: dict[str, Any] = {
        "error": {"code": status, "message": message, "status": _STATUS_NAME.get(status, "UNKNOWN")}
    }
    if reason:
        body["error"]["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
            }
        ]
    return web.json_response(body, status=status, headers=headers)


class Invalid(Exception):
    pass


def _check_parts(parts: Any, where: str) -> None:
    if not isinstance(parts, list) or not parts:
        raise Invalid(f"{where}.parts must not be empty")
    for j, part in enumerate(parts):
        keys = set(part) - {"thought", "thoughtSignature"}
        unknown = set(part) - _PART_FIELDS
        if unknown:
            raise Invalid(
                f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}" at {where}.parts[{j}]'
            )
        if len(keys) != 1:
            raise Invalid(f"{where}.parts[{j}] must hold exactly one of text, inlineData, fileData, ...")
        if "inlineData" in part and not (
            part["inlineData"].get("mimeType") and part["inlineData"].get("data")
        ):
            raise Invalid(f"{where}.parts[{j}].inlineData needs mimeType and data")
        if "inlineData" in part:
            base64.b64decode(part["inlineData"]["data"], validate=True)
        if "fileData" in part and not part["fileData"].get("fileUri"):
            raise Invalid(f"{where}.parts[{j}].fileData needs fileUri")


def validate_generate(body: Any) -> None:
    """What the real generateContent rejects."""
    if not isinstance(body, dict):
        raise Invalid("Invalid JSON payload received.")
    unknown = set(body) - _REQUEST_FIELDS
    if unknown:
        raise Invalid(
            f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}": Cannot find field.'
        )
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise Invalid("* GenerateContentRequest.contents: contents is not specified")
    previous_calls = 0
    for i, content in enumerate(contents):
        role = content.get("role")
        if role not in ("user", "model"):
            raise Invalid(f"Please use a valid role: user, model. (contents[{i}].role = {role!r})")
        _check_parts(content.get("parts"), f"contents[{i}]")
        responses = sum(1 for p in content["parts"] if "functionResponse" in p)
        if responses:
            if role != "user" or responses != previous_calls:
                raise Invalid(
                    "Please ensure that function response turn comes immediately after a function call turn "
                    "and that the number of function response parts equals the number of function call parts."
                )
            for p in content["parts"]:
                if "functionResponse" in p and not isinstance(p["functionResponse"].get("response"), dict):
                    raise Invalid("functionResponse.response must be an object")
        previous_calls = sum(1 for p in content["parts"] if "functionCall" in p) if role == "model" else 0
    system = body.get("systemInstruction")
    if system is not None:
        _check_parts(system.get("parts"), "systemInstruction")
    config = body.get("generationConfig") or {}
    unknown = set(config) - _GENERATION_FIELDS
    if unknown:
        raise Invalid(
            f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\" at 'generation_config'"
        )
    if "responseSchema" in config and config.get("responseMimeType") != "application/json":
        raise Invalid("responseSchema requires responseMimeType application/json")
    for tool in body.get("tools") or []:
        for decl in tool.get("functionDeclarations") or []:
            if not decl.get("name"):
                raise Invalid("functionDeclarations[].name is required")
            params = decl.get("parameters")
            if params is not None and "additionalProperties" in orjson.dumps(params).decode():
                raise Invalid('Invalid JSON payload received. Unknown name "additionalProperties"')


@dataclass
class FakeGoogle:
    api_key: str = "fake-google-key"
    models: tuple[str, ...] = (
        "gemini-2.0-flash",
        "gemini-2.5-flash",
        "text-embedding-004",
        "text-embedding-005",
        "imagen-3.0-generate-002",
    )
    reply_text: str = "Hello from Gemini."
    tool_call: dict[str, Any] | None = None  # {"name": ..., "args": {...}} when tools are sent
    script: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    bearer_tokens: set[str] = field(default_factory=set)  # Vertex: tokens the token endpoint issued
    vertex_project: str = "my-project"
    vertex_region: str = "us-central1"
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeGoogle:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1beta/models/{call}", self.gemini_call)
        app.router.add_post(
            "/v1/projects/{project}/locations/{region}/publishers/google/models/{call}", self.vertex_call
        )
        self.extra_routes(app)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    def extra_routes(self, app: web.Application) -> None:
        """Subclasses add routes (the Vertex OAuth token endpoint)."""

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # ---------------------------------------------------------------- routing

    async def _record(self, request: web.Request) -> Recorded:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        rec = Recorded(request.method, request.path_qs, dict(request.headers), body, raw)
        self.requests.append(rec)
        return rec

    async def gemini_call(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return google_error(
                403, "Method doesn't allow unregistered callers (callers without established identity)."
            )
        if key != self.api_key:
            return google_error(
                400, "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID"
            )
        return await self._dispatch(request, rec, "v1beta")

    async def vertex_call(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        auth = request.headers.get("Authorization", "")
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if auth.startswith("Bearer "):
            if auth[7:] not in self.bearer_tokens:
                return google_error(401, "Request had invalid authentication credentials.")
        elif key != self.api_key:
            return google_error(401, "API keys are not supported by this API. Expected OAuth2 access token.")
        if (
            request.match_info["project"] != self.vertex_project
            or request.match_info["region"] != self.vertex_region
        ):
            return google_error(404, "Project or location not found.")
        return await self._dispatch(request, rec, "v1")

    async def _dispatch(self, request: web.Request, rec: Recorded, version: str) -> web.StreamResponse:
        model, _, method = request.match_info["call"].partition(":")
        if model not in self.models:
            return google_error(
                404, f"models/{model} is not found for API version {version}, or is not supported."
            )
        behaviour = self.script.pop(0) if self.script else {}
        status = behaviour.get("status")
        if status:
            headers = {"Retry-After": str(behaviour["retry_after"])} if "retry_after" in behaviour else None
            return google_error(status, behaviour.get("message", f"fake failure {status}"), headers)
        try:
            if method == "generateContent":
                validate_generate(rec.body)
                return web.json_response(self._answer(rec.body, model, behaviour))
            if method == "streamGenerateContent":
                if request.query.get("alt") != "sse":
                    raise Invalid("this fake only serves alt=sse streams")
                validate_generate(rec.body)
                return await self._stream(request, rec.body, model, behaviour)
            if method == "batchEmbedContents" and version == "v1beta":
                return web.json_response(self._batch_embed(rec.body, model))
            if method == "predict":
                return web.json_response(self._predict(rec.body, model))
        except Invalid as exc:
            return google_error(400, str(exc))
        return google_error(404, f"method {method} is not found")

    # ---------------------------------------------------------------- answers

    def _wants_tool(self, body: dict[str, Any]) -> bool:
        last = body["contents"][-1]["parts"]
        return bool(self.tool_call and body.get("tools") and not any("functionResponse" in p for p in last))

    def _usage(self) -> dict[str, Any]:
        return {
            "promptTokenCount": 11,
            "candidatesTokenCount": 5,
            "totalTokenCount": 20,
            "cachedContentTokenCount": 4,
            "thoughtsTokenCount": 4,
        }

    def _answer(self, body: dict[str, Any], model: str, behaviour: dict[str, Any]) -> dict[str, Any]:
        if behaviour.get("block"):
            return {
                "promptFeedback": {"blockReason": "SAFETY"},
                "usageMetadata": {"promptTokenCount": 11, "totalTokenCount": 11},
            }
        if self._wants_tool(body):
            parts: list[dict[str, Any]] = [{"functionCall": dict(self.tool_call or {})}]
        else:
            parts = [{"text": behaviour.get("text", self.reply_text)}]
        finish = behaviour.get("finish", "STOP")
        return {
            "candidates": [
                {"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}
            ],
            "usageMetadata": self._usage(),
            "modelVersion": model,
            "responseId": "resp-fake-1",
        }

    async def _stream(
        self, request: web.Request, body: dict[str, Any], model: str, behaviour: dict[str, Any]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if self._wants_tool(body):
            events = [
                {
                    "candidates": [
                        {
                            "content": {"role": "model", "parts": [{"functionCall": self.tool_call}]},
                            "finishReason": "STOP",
                            "index": 0,
                        }
                    ],
                    "usageMetadata": self._usage(),
                    "modelVersion": model,
                }
            ]
        else:
            words = behaviour.get("text", self.reply_text).split(" ")
            pieces = [w + " " for w in words[:-1]] + [words[-1]]
            events = [
                {
                    "candidates": [{"content": {"role": "model", "parts": [{"text": p}]}, "index": 0}],
                    "usageMetadata": {"promptTokenCount": 11, "totalTokenCount": 11},
                    "modelVersion": model,
                }
                for p in pieces
            ]
            events[-1]["candidates"][0]["finishReason"] = "STOP"
            events[-1]["usageMetadata"] = self._usage()
        cut_after = behaviour.get("cut_after")
        for i, event in enumerate(events):
            if cut_after is not None and i >= cut_after:
                break
            await resp.write(b"data: " + orjson.dumps(event) + b"\r\n\r\n")
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    def _batch_embed(self, body: Any, model: str) -> dict[str, Any]:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise Invalid("* BatchEmbedContentsRequest.requests: requests is not specified")
        vectors = []
        for i, req in enumerate(requests):
            if req.get("model") != f"models/{model}":
                raise Invalid(f"requests[{i}].model must be models/{model} (the model in the URL)")
            parts = (req.get("content") or {}).get("parts") or []
            if not parts or not parts[0].get("text"):
                raise Invalid(f"requests[{i}].content must hold text")
            dims = int(req.get("outputDimensionality") or 3)
            vectors.append({"values": [round(0.25 * (i + 1) * (k + 1), 4) for k in range(dims)]})
        return {"embeddings": vectors}

    def _predict(self, body: Any, model: str) -> dict[str, Any]:
        instances = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(instances, list) or not instances:
            raise Invalid("instances is required")
        if model.startswith("imagen-"):
            prompt = instances[0].get("prompt")
            if not prompt:
                raise Invalid("instances[0].prompt is required")
            count = int((body.get("parameters") or {}).get("sampleCount") or 1)
            if "blocked" in prompt:
                return {"predictions": [{"raiFilteredReason": "filtered by the safety filter"}]}
            return {"predictions": [{"bytesBase64Encoded": TINY_PNG_B64, "mimeType": "image/png"}] * count}
        predictions = []
        for i, inst in enumerate(instances):
            if not isinstance(inst.get("content"), str):
                raise Invalid(f"instances[{i}].content is required")
            dims = int((body.get("parameters") or {}).get("outputDimensionality") or 3)
            values = [round(0.5 * (i + 1) * (k + 1), 4) for k in range(dims)]
            predictions.append(
                {"embeddings": {"values": values, "statistics": {"token_count": 2, "truncated": False}}}
            )
        return {"predictions": predictions, "metadata": {"billableCharacterCount": 10}}
