"""Replicate adapter: predictions for language and image models, bearer auth.

A model `owner/name` runs through `POST /v1/models/{owner}/{name}/predictions`; a pinned
`owner/name:version` through `POST /v1/predictions` with that version. Non-streamed calls
send `Prefer: wait` and poll `urls.get` while the prediction is still running. Streamed chat
reads the prediction's `urls.stream` (SSE events `output`, `error`, `done`) and turns each
`output` event into a chat.completion.chunk as it arrives.

Language models take one prompt: system messages become `system_prompt`; a lone user message
is the prompt; a longer conversation is written out as a User:/Assistant: transcript.
The first image of the last user message, if any, is sent as the model's `image` input.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from yarl import URL

from ferro_proxy.errors import GatewayError, bad_request
from ferro_proxy.exchange import Exchange, Reply, StreamChunk, Usage
from ferro_proxy.safe_fetch import FetchError, SafeFetcher, same_origin
from ferro_proxy.sse import iter_events, parse_event
from providers.base import (
    Provider,
    ProviderSpec,
    ResolvedSettings,
    parse_json_body,
    record_usage,
    stream_broken,
    transport_error,
    upstream_error,
)
from providers.chat_shape import check_chat_shape
from providers.registry import register_provider

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

REPLICATE_MODELS = (
    "meta/meta-llama-3-8b-instruct",
    "meta/meta-llama-3-70b-instruct",
    "meta/meta-llama-3.1-405b-instruct",
    "ibm-granite/granite-3.3-8b-instruct",
    "yorickvp/llava-13b",
    "black-forest-labs/flux-schnell",
    "black-forest-labs/flux-dev",
    "black-forest-labs/flux-1.1-pro",
    "stability-ai/stable-diffusion-3.5-large",
)
_RUNNING = frozenset({"starting", "processing"})
_POLL_DELAYS = (0.25, 0.5, 1.0, 2.0)  # then every 2 s until the request's deadline
_CANCEL_TIMEOUT = aiohttp.ClientTimeout(total=10)
_BACKGROUND: set[asyncio.Task[None]] = set()  # cancel calls in flight (kept referenced)
_ASPECT = {
    "1024x1024": "1:1",
    "512x512": "1:1",
    "256x256": "1:1",
    "1792x1024": "16:9",
    "1024x1792": "9:16",
    "1536x1024": "3:2",
    "1024x1536": "2:3",
}
DEFAULT_BASE_URL = "https://api.replicate.com/v1"
# Replicate's own answer names stream URLs on other hosts of its domains; with the default base
# URL those may get the token too. A configured base URL trusts its own origin only.
_REPLICATE_DOMAINS = (".replicate.com", ".replicate.net")

# ------------------------------------------------------------------ translation


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _first_image(content: Any) -> str | None:
    if not isinstance(content, list):
        return None
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str) and url:
                return url
    return None


def chat_input(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat body -> the `input` of a language-model prediction."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", param="messages")
    if body.get("tools") and body.get("tool_choice") != "none":
        raise bad_request("Replicate models take a plain prompt; tools are not supported", param="tools")
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    image: str | None = None
    for msg in messages:
        role = msg.get("role") if isinstance(msg, dict) else None
        if role in ("system", "developer"):
            system.append(_text(msg.get("content")))
        elif role in ("user", "assistant"):
            turns.append((role, _text(msg.get("content"))))
            if role == "user":
                image = _first_image(msg.get("content")) or image
        else:
            raise bad_request(
                f"message role {role!r} is not supported for Replicate models", param="messages"
            )
    if not turns or turns[-1][0] != "user":
        raise bad_request("the conversation must end with a user message", param="messages")
    if len(turns) == 1:
        prompt = turns[0][1]
    else:
        lines = [f"{'User' if role == 'user' else 'Assistant'}: {text}" for role, text in turns]
        prompt = "\n\n".join(lines) + "\n\nAssistant:"
    out: dict[str, Any] = {"prompt": prompt}
    if system:
        out["system_prompt"] = "\n\n".join(s for s in system if s)
    if image:
        out["image"] = image
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        out["max_tokens"] = max_tokens
    for key in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop")
    if stop:  # Replicate's language models take stop sequences as one comma-separated string
        out["stop_sequences"] = stop if isinstance(stop, str) else ",".join(stop)
    return out


def image_input(body: dict[str, Any]) -> dict[str, Any]:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("'prompt' must be a non-empty string", param="prompt")
    out: dict[str, Any] = {"prompt": prompt}
    if body.get("n"):
        out["num_outputs"] = int(body["n"])
    size = body.get("size")
    if size and size != "auto":
        if size not in _ASPECT:
            raise bad_request(f"size {size!r} has no Replicate aspect ratio", param="size")
        out["aspect_ratio"] = _ASPECT[size]
    return out


def output_text(output: Any) -> str:
    """Language models answer a list of text pieces (or, for some, one string)."""
    if output is None:
        return ""
    if isinstance(output, list):
        return "".join(str(p) for p in output)
    return str(output)


def usage_from_metrics(metrics: Any) -> Usage | None:
    if not isinstance(metrics, dict) or "input_token_count" not in metrics:
        return None
    return Usage(
        prompt_tokens=int(metrics.get("input_token_count") or 0),
        completion_tokens=int(metrics.get("output_token_count") or 0),
    )


def replicate_error(
    provider: str, status: int, body: bytes, headers: Mapping[str, str] | None
) -> GatewayError:
    """Replicate answers errors as problem details: `{"title", "detail", "status"}`."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and data.get("detail"):
        detail = str(data["detail"])
        fields = data.get("invalid_fields")
        if isinstance(fields, list) and fields:
            detail += ": " + "; ".join(str(f.get("description", f)) for f in fields if isinstance(f, dict))
        body = orjson.dumps({"error": {"message": detail, "code": None}})
    return upstream_error(provider, status, body, headers)


# ------------------------------------------------------------------ the adapter


class ReplicateProvider(Provider):
    default_models = tuple(REPLICATE_MODELS)

    def __init__(self, settings: ResolvedSettings, gateway: Gateway) -> None:
        super().__init__(settings, gateway)
        self._fetcher = SafeFetcher(lambda: gateway.config.fetch)

    async def close(self) -> None:
        await self._fetcher.close()
        await super().close()

    def _credentials_go_to(self, url: str) -> bool:
        """May a URL named in Replicate's answer get the token (and configured headers)?"""
        base = self.settings.base_url
        if same_origin(url, base):
            return True
        if base.rstrip("/") != DEFAULT_BASE_URL:
            return False
        try:
            u = URL(url)
        except (ValueError, TypeError):
            return False
        host = (u.raw_host or "").lower()
        return u.scheme == "https" and u.port == 443 and host.endswith(_REPLICATE_DOMAINS)

    def _named_url(self, url: str) -> str:
        """An upstream-named URL the token is sent to: only on the configured host."""
        if not self._credentials_go_to(url):
            raise GatewayError(
                502,
                f"{self.name} named a URL outside its configured host",
                code="upstream_bad_response",
                type="api_error",
                provider=self.name,
            )
        return url

    def serves(self, model: str) -> bool:
        return super().serves(model) or model.split(":", 1)[0] in REPLICATE_MODELS

    def _headers(self, ex: Exchange, wait: bool) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **self.settings.headers}
        key = self.api_key_for(ex)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if wait:
            headers["Prefer"] = "wait"
        return headers

    async def _request(
        self,
        ex: Exchange,
        method: str,
        url: str,
        timeout: aiohttp.ClientTimeout,
        payload: Any = None,
        wait: bool = False,
    ) -> dict[str, Any]:
        try:
            async with self.session.request(
                method,
                url,
                data=orjson.dumps(payload) if payload is not None else None,
                headers=self._headers(ex, wait),
                timeout=timeout,
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise replicate_error(self.name, resp.status, raw, resp.headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(self.name, exc) from None
        return parse_json_body(self.name, raw)

    async def _create(
        self, ex: Exchange, model: str, payload: dict[str, Any], timeout: aiohttp.ClientTimeout, wait: bool
    ) -> dict[str, Any]:
        name, _, version = model.partition(":")
        if name.count("/") != 1:
            raise bad_request(
                f"Replicate models are named owner/name[:version], not {model!r}", param="model"
            )
        if version:
            url = f"{self.settings.base_url}/predictions"
            payload = {"version": version, **payload}
        else:
            url = f"{self.settings.base_url}/models/{name}/predictions"
        return await self._request(ex, "POST", url, timeout, payload, wait=wait)

    async def _finished(
        self, ex: Exchange, prediction: dict[str, Any], timeout: aiohttp.ClientTimeout
    ) -> dict[str, Any]:
        """Poll `urls.get` until the prediction is no longer running; raise if it did not succeed."""
        polls = 0
        while prediction.get("status") in _RUNNING:
            get_url = (prediction.get("urls") or {}).get("get")
            if not get_url:
                raise GatewayError(
                    502, f"{self.name}: a running prediction without urls.get", code="upstream_bad_response"
                )
            await asyncio.sleep(_POLL_DELAYS[min(polls, len(_POLL_DELAYS) - 1)])
            polls += 1
            prediction = await self._request(ex, "GET", self._named_url(get_url), timeout)
        status = prediction.get("status")
        if status != "succeeded":
            reason = prediction.get("error") or f"the prediction ended as {status!r}"
            raise GatewayError(
                502,
                f"{self.name}: prediction failed: {reason}",
                code="upstream_error",
                type="api_error",
                provider=self.name,
            )
        return prediction

    # ------------------------------------------------------------ chat

    async def chat(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        check_chat_shape(body)
        model = str(body.get("model", ""))
        payload: dict[str, Any] = {"input": chat_input(body)}
        if not body.get("stream"):
            prediction = await self._finished(
                ex, await self._create(ex, model, payload, timeout, wait=True), timeout
            )
            usage = usage_from_metrics(prediction.get("metrics"))
            record_usage(ex, usage)
            return Reply(
                200,
                data={
                    "id": "chatcmpl-" + str(prediction.get("id") or uuid.uuid4().hex),
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": output_text(prediction.get("output")),
                            },
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": (usage or Usage()).to_openai(),
                },
            )
        payload["stream"] = True
        prediction = await self._create(ex, model, payload, timeout, wait=False)
        stream_url = (prediction.get("urls") or {}).get("stream")
        if not stream_url:
            raise bad_request(f"the Replicate model {model!r} does not stream its output", param="stream")
        sse = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if not self._credentials_go_to(stream_url):
            # Another host: no token, and only a public one (the fetch policy decides).
            try:
                resp = await self._fetcher.open(stream_url, headers=sse, timeout=timeout)
            except FetchError:
                self._cancel_soon(ex, prediction)
                raise GatewayError(
                    502,
                    f"{self.name}: the prediction's stream could not be opened",
                    code="upstream_bad_response",
                    type="api_error",
                    provider=self.name,
                ) from None
            return Reply(200, stream=self._stream(ex, resp, prediction, model, timeout))
        try:
            resp = await self.session.get(
                stream_url, headers={**self._headers(ex, wait=False), **sse}, timeout=timeout
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(self.name, exc) from None
        if resp.status >= 400:
            raw = await resp.read()
            resp.release()
            raise replicate_error(self.name, resp.status, raw, resp.headers)
        return Reply(200, stream=self._stream(ex, resp, prediction, model, timeout))

    async def _stream(
        self,
        ex: Exchange,
        resp: aiohttp.ClientResponse,
        prediction: dict[str, Any],
        model: str,
        timeout: aiohttp.ClientTimeout,
    ) -> AsyncIterator[StreamChunk]:
        base = {
            "id": "chatcmpl-" + str(prediction.get("id") or uuid.uuid4().hex),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        done = False
        try:
            yield StreamChunk.from_json(
                {
                    **base,
                    "choices": [
                        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    ],
                }
            )
            async for raw in iter_events(resp.content.iter_any()):
                name, data = parse_event(raw)
                if name == "output":
                    if data:
                        yield StreamChunk.from_json(
                            {
                                **base,
                                "choices": [{"index": 0, "delta": {"content": data}, "finish_reason": None}],
                            }
                        )
                elif name == "error":
                    raise GatewayError(
                        502,
                        f"{self.name}: prediction failed: {_error_detail(data)}",
                        code="upstream_stream_error",
                        type="api_error",
                    )
                elif name == "done":
                    reason = _done_reason(data)
                    if reason:  # e.g. "canceled"
                        raise GatewayError(
                            502,
                            f"{self.name}: the prediction ended as {reason!r}",
                            code="upstream_stream_error",
                            type="api_error",
                        )
                    done = True
                    break
            if not done:
                raise GatewayError(
                    502,
                    f"{self.name} ended the stream without a done event",
                    code="upstream_stream_error",
                    type="api_error",
                )
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise stream_broken(self.name, exc) from None
        finally:
            if done:
                resp.release()
            else:
                resp.close()
                self._cancel_soon(ex, prediction)
        yield StreamChunk.from_json({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        usage = await self._final_usage(ex, prediction, timeout)
        record_usage(ex, usage)
        if ex.wants_usage_chunk:
            yield StreamChunk.from_json({**base, "choices": [], "usage": (usage or Usage()).to_openai()})
        yield StreamChunk.done()

    def _cancel_soon(self, ex: Exchange, prediction: dict[str, Any]) -> None:
        """An abandoned stream: cancel the prediction so Replicate stops generating (and billing)."""
        cancel_url = (prediction.get("urls") or {}).get("cancel")
        if not cancel_url or not self._credentials_go_to(cancel_url):
            return
        task = asyncio.get_running_loop().create_task(self._cancel(ex, cancel_url))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def _cancel(self, ex: Exchange, url: str) -> None:
        try:
            async with self.session.post(url, headers=self._headers(ex, wait=False), timeout=_CANCEL_TIMEOUT):
                pass
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass  # best effort: the prediction also ends on its own

    async def _final_usage(
        self, ex: Exchange, prediction: dict[str, Any], timeout: aiohttp.ClientTimeout
    ) -> Usage | None:
        """Token counts are only in the finished prediction's metrics: one GET after `done`."""
        get_url = (prediction.get("urls") or {}).get("get")
        if not get_url:
            return None
        try:
            finished = await self._request(ex, "GET", self._named_url(get_url), timeout)
        except GatewayError:
            return None  # the answer is complete; only the token count is lost
        return usage_from_metrics(finished.get("metrics"))

    # ------------------------------------------------------------ images

    async def images(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        model = str(body.get("model") or "black-forest-labs/flux-schnell")
        payload = {"input": image_input(body)}
        prediction = await self._finished(
            ex, await self._create(ex, model, payload, timeout, wait=True), timeout
        )
        output = prediction.get("output")
        urls = [str(u) for u in (output if isinstance(output, list) else [output]) if u]
        if not urls:
            raise GatewayError(
                502, f"{self.name}: the prediction returned no image", code="upstream_bad_response"
            )
        if body.get("response_format") == "b64_json":
            data = [{"b64_json": await self._download_b64(u, timeout)} for u in urls]
        else:
            data = [{"url": u} for u in urls]
        return Reply(200, data={"created": int(time.time()), "data": data})

    async def _download_b64(self, url: str, timeout: aiohttp.ClientTimeout) -> str:
        if url.startswith("data:"):
            return url.partition(",")[2]
        if not same_origin(url, self.settings.base_url):
            # Output files live on another host (replicate.delivery): fetched without the token,
            # and only from a public address.
            try:
                data, _ = await self._fetcher.fetch(url, timeout=timeout.total)
            except FetchError:
                raise GatewayError(
                    502,
                    f"{self.name}: fetching the generated image failed",
                    code="upstream_error",
                    type="api_error",
                    provider=self.name,
                ) from None
            return base64.b64encode(data).decode()
        try:
            async with self.session.get(url, timeout=timeout) as resp:
                if resp.status >= 400:
                    raise GatewayError(
                        502,
                        f"{self.name}: fetching the generated image failed ({resp.status})",
                        code="upstream_error",
                    )
                return base64.b64encode(await resp.read()).decode()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(self.name, exc) from None


def _error_detail(data: str) -> str:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data or "stream error"
    if isinstance(parsed, dict):
        return str(parsed.get("detail") or parsed.get("error") or parsed)
    return str(parsed)


def _done_reason(data: str) -> str | None:
    try:
        parsed = orjson.loads(data) if data else {}
    except orjson.JSONDecodeError:
        return None
    return parsed.get("reason") or None if isinstance(parsed, dict) else None


register_provider(
    ProviderSpec(
        name="replicate",
        display="Replicate",
        factory=ReplicateProvider,
        default_base_url="https://api.replicate.com",
        env_key="REPLICATE_API_TOKEN",
        env_base_url="REPLICATE_BASE_URL",
        version_segment="/v1",
        model_prefixes=("meta/", "black-forest-labs/", "stability-ai/", "ibm-granite/"),
        capabilities=frozenset({"chat", "stream", "vision", "images"}),
        hosts=("api.replicate.com",),
    )
)
