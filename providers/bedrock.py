"""Amazon Bedrock: Converse / ConverseStream for chat (one translation for every model
family), InvokeModel for Titan and Cohere embeddings and Titan Image / Nova Canvas images.

Requests are SigV4-signed (providers/aws_sigv4.py) with credentials from the AWS chain in
providers/aws_credentials.py (static keys, web identity, container credentials, IMDSv2), or
carry a Bedrock API key as a bearer token. The stream is the binary AWS event stream, decoded
incrementally and translated event by event.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from ferro_proxy.config import ConfigError
from ferro_proxy.errors import GatewayError, bad_request
from ferro_proxy.exchange import Exchange, Reply, StreamChunk, Usage
from ferro_proxy.safe_fetch import FetchError, SafeFetcher, image_fetch_failed
from providers import aws_credentials as awsc
from providers import translate_bedrock as tb
from providers.aws_eventstream import EventStreamDecoder, EventStreamError
from providers.aws_sigv4 import sign
from providers.base import (
    Provider,
    ProviderSpec,
    ResolvedSettings,
    parse_json_body,
    read_body,
    record_usage,
    stream_broken,
    transport_error,
    upstream_error,
)
from providers.chat_shape import check_chat_shape
from providers.registry import register_provider

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

SERVICE = "bedrock"
MAX_IMAGE_BYTES = 5 * 1024 * 1024
COHERE_BATCH = 96  # Cohere Embed on Bedrock takes at most 96 texts per call
# Listed by GET /v1/models when neither the catalog nor the config names any.
DEFAULT_MODELS = (
    "anthropic.claude-3-5-sonnet-20241022-v2:0",
    "anthropic.claude-3-5-haiku-20241022-v1:0",
    "amazon.nova-pro-v1:0",
    "amazon.nova-lite-v1:0",
    "meta.llama3-1-70b-instruct-v1:0",
    "mistral.mistral-large-2407-v1:0",
    "amazon.titan-embed-text-v2:0",
    "cohere.embed-english-v3",
    "amazon.titan-image-generator-v2:0",
    "amazon.nova-canvas-v1:0",
)


class BedrockProvider(Provider):
    default_models = tuple(DEFAULT_MODELS)

    def __init__(self, settings: ResolvedSettings, gateway: Gateway) -> None:
        super().__init__(settings, gateway)
        env = settings.env
        extra = settings.extra
        self.region = extra.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.base_url = settings.base_url or f"https://bedrock-runtime.{self.region}.amazonaws.com"
        try:
            source = awsc.select(env, extra, self.region, setting=f"providers.{settings.name}")
        except ValueError as exc:
            raise ConfigError([str(exc)]) from None
        self.bearer = source.token if isinstance(source, awsc.BearerToken) else None
        self.credentials = (
            awsc.CredentialCache(source, lambda: self.session, settings.name)
            if isinstance(source, awsc.Source)
            else None
        )
        self._fetcher = SafeFetcher(lambda: gateway.config.fetch)

    # ------------------------------------------------------------ plumbing

    def health(self) -> dict[str, Any]:
        auth = "bearer" if self.bearer else (self.credentials.source.kind if self.credentials else None)
        return {"base_url_set": True, "key_configured": auth is not None, "region": self.region, "auth": auth}

    def start(self) -> None:
        if self.credentials is not None:
            self.credentials.start()

    async def _auth_headers(self, url: str, headers: dict[str, str], data: bytes) -> dict[str, str]:
        if self.bearer:
            return {"Authorization": "Bearer " + self.bearer}
        if self.credentials is None:
            raise GatewayError(
                500,
                "bedrock is enabled but found no AWS credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_BEARER_TOKEN_BEDROCK, AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE, "
                "AWS_CONTAINER_CREDENTIALS_FULL_URI or _RELATIVE_URI, or (EC2 instance profile) "
                "AWS_EC2_METADATA_SERVICE_ENDPOINT or providers.bedrock.credentials: imds",
                code="provider_not_configured",
                type="api_error",
                provider=self.name,
            )
        creds = await self.credentials.get()
        return sign("POST", url, headers, data, creds, self.region, SERVICE).headers

    def _url(self, model: str, action: str) -> str:
        return f"{self.base_url}/model/{quote(model, safe='')}/{action}"

    async def _post(
        self, model: str, action: str, payload: dict[str, Any], timeout: aiohttp.ClientTimeout, accept: str
    ) -> aiohttp.ClientResponse:
        url = self._url(model, action)
        data = orjson.dumps(payload)
        headers = {"Content-Type": "application/json", "Accept": accept, **self.settings.headers}
        headers.update(await self._auth_headers(url, headers, data))
        try:
            resp = await self.session.post(
                URL(url, encoded=True), data=data, headers=headers, timeout=timeout
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(self.name, exc) from None
        if resp.status >= 400:
            try:
                body = await resp.read()
            except (TimeoutError, aiohttp.ClientError):
                body = b""
            finally:
                resp.release()
            raise self._error(resp.status, body, resp.headers)
        return resp

    def _error(self, status: int, body: bytes, headers: Any) -> GatewayError:
        err = upstream_error(self.name, status, body, headers)
        # x-amzn-ErrorType: "ValidationException:http://internal.amazon.com/..."
        kind = (headers.get("x-amzn-ErrorType") or "").split(":")[0]
        if kind and err.code is None:
            err.code = kind
        return err

    async def _read_json(self, resp: aiohttp.ClientResponse) -> Any:
        return parse_json_body(self.name, await read_body(self.name, resp), require_object=False)

    async def _fetch_image(self, url: str, timeout: aiohttp.ClientTimeout) -> tuple[str, str]:
        """Converse takes image bytes only: download an image URL the client gave, under the
        outbound-fetch policy (public https hosts only; one neutral error for any failure)."""
        try:
            data, mime = await self._fetcher.fetch(url, timeout=timeout.total, max_bytes=MAX_IMAGE_BYTES)
        except FetchError:
            raise image_fetch_failed() from None
        fmt = tb.image_format(mime, data)
        if fmt is None:
            raise bad_request("an image URL is not png, jpeg, gif or webp", param="messages")
        return fmt, base64.b64encode(data).decode()

    async def close(self) -> None:
        if self.credentials is not None:
            await self.credentials.close()
        await self._fetcher.close()
        await super().close()

    # ------------------------------------------------------------ chat

    async def chat(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        check_chat_shape(body)
        model = str(body.get("model") or "")
        urls = tb.remote_image_urls(body.get("messages") or [])
        fetched: dict[str, tuple[str, str]] = {}
        if urls:
            images = await asyncio.gather(*(self._fetch_image(u, timeout) for u in urls))
            fetched = dict(zip(urls, images, strict=True))
        native, json_tool = tb.to_converse(body, fetched)
        if not body.get("stream"):
            resp = await self._post(model, "converse", native, timeout, "application/json")
            request_id = resp.headers.get("x-amzn-RequestId")
            data = await self._read_json(resp)
            out = tb.from_converse(data, model, json_tool, request_id)
            record_usage(ex, Usage.from_openai(out["usage"]))
            return Reply(200, data=out)
        resp = await self._post(
            model, "converse-stream", native, timeout, "application/vnd.amazon.eventstream"
        )
        translator = tb.ConverseStreamTranslator(
            model, json_tool, id=tb.new_id(resp.headers.get("x-amzn-RequestId"))
        )
        return Reply(200, stream=self._stream(ex, resp, translator))

    async def _stream(
        self, ex: Exchange, resp: aiohttp.ClientResponse, tr: tb.ConverseStreamTranslator
    ) -> AsyncIterator[StreamChunk]:
        decoder = EventStreamDecoder()
        finished = False
        try:
            async for data in resp.content.iter_any():
                for message in decoder.feed(data):
                    kind = message.message_type
                    if kind == "exception":
                        raise tb.stream_exception(self.name, message.exception_type, message.payload)
                    if kind == "error":
                        text = str(message.headers.get(":error-message") or "stream error")
                        raise tb.stream_exception(
                            self.name, message.exception_type, orjson.dumps({"message": text})
                        )
                    try:
                        payload = orjson.loads(message.payload) if message.payload else {}
                    except orjson.JSONDecodeError:
                        raise GatewayError(
                            502,
                            f"{self.name} sent a stream event that is not JSON",
                            code="upstream_stream_error",
                        ) from None
                    for chunk in tr.on_event(message.event_type, payload):
                        yield StreamChunk.from_json(chunk)
                    if message.event_type == "metadata" and tr.usage is not None:
                        record_usage(ex, tr.usage)
            if not tr.stopped or decoder.pending:
                raise GatewayError(
                    502, f"{self.name} ended the stream early", code="upstream_stream_error", type="api_error"
                )
            finished = True
            if ex.wants_usage_chunk:
                yield StreamChunk.from_json(tr.usage_chunk())
            yield StreamChunk.done()
        except EventStreamError as exc:
            raise GatewayError(
                502, f"{self.name} stream is corrupt: {exc}", code="upstream_stream_error", type="api_error"
            ) from None
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise stream_broken(self.name, exc) from None
        finally:
            if finished:
                resp.release()
            else:  # unfinished: drop the connection so the upstream stops generating
                resp.close()

    # ------------------------------------------------------------ embeddings

    async def _invoke(
        self, model: str, payload: dict[str, Any], timeout: aiohttp.ClientTimeout
    ) -> tuple[Any, int]:
        resp = await self._post(model, "invoke", payload, timeout, "application/json")
        tokens = int(resp.headers.get("X-Amzn-Bedrock-Input-Token-Count") or 0)
        return await self._read_json(resp), tokens

    async def embeddings(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        model = str(body.get("model") or "")
        family = tb.embedding_family(model)
        if family is None:
            raise bad_request(
                f"bedrock embeddings support Titan and Cohere embedding models, not {model!r}", param="model"
            )
        texts = tb.embedding_inputs(body)
        vectors: list[list[float]] = []
        tokens = 0
        if family == "titan":  # one text per call
            answers = await asyncio.gather(
                *(self._invoke(model, tb.titan_embed_body(t, body), timeout) for t in texts)
            )
            for data, header_tokens in answers:
                vectors.append(data.get("embedding") or [])
                tokens += int(data.get("inputTextTokenCount") or header_tokens)
        else:
            batches = [texts[i : i + COHERE_BATCH] for i in range(0, len(texts), COHERE_BATCH)]
            answers = await asyncio.gather(
                *(self._invoke(model, tb.cohere_embed_body(b, body), timeout) for b in batches)
            )
            for data, header_tokens in answers:
                vectors.extend(tb.cohere_vectors(data))
                tokens += header_tokens
        record_usage(ex, Usage(prompt_tokens=tokens))
        return Reply(200, data=tb.embeddings_response(model, vectors, tokens, body.get("encoding_format")))

    # ------------------------------------------------------------ images

    async def images(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        model = str(body.get("model") or "")
        if tb.image_family(model) is None:
            raise bad_request(
                f"bedrock image generation supports Titan Image Generator and Nova Canvas, not {model!r}",
                param="model",
            )
        data, _ = await self._invoke(model, tb.titan_image_body(body), timeout)
        return Reply(200, data=tb.images_response(data, body.get("response_format")))


class BedrockSpec(ProviderSpec):
    """Enabled by the environment when AWS_REGION is set (as before) or the AWS chain finds a
    source there, judged from the variables alone: no I/O at start."""

    def enabled_by_env(self, env: Mapping[str, str]) -> bool:
        return bool(env.get("AWS_REGION")) or awsc.configured_kind(env) is not None


register_provider(
    BedrockSpec(
        name="bedrock",
        display="Amazon Bedrock",
        factory=BedrockProvider,
        default_base_url="",  # https://bedrock-runtime.{region}.amazonaws.com, region known at build time
        env_key=None,
        env_base_url="BEDROCK_BASE_URL",
        env_enables=("AWS_REGION", *awsc.ENABLING_VARIABLES),
        model_prefixes=(
            "anthropic.",
            "amazon.",
            "meta.",
            "mistral.",
            "cohere.",
            "ai21.",
            "deepseek.",
            "writer.",
            "us.",
            "eu.",
            "apac.",
            "global.",
            "arn:aws:bedrock:",
        ),
        capabilities=frozenset({"chat", "stream", "tools", "vision", "embeddings", "images"}),
        hosts=("bedrock-runtime.us-east-1.amazonaws.com",),
    )
)
