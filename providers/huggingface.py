"""Hugging Face Inference Providers: chat through the OpenAI-compatible router
(https://router.huggingface.co/v1, passed through untouched), embeddings through the
`feature-extraction` pipeline and images through `text-to-image`, both on the hf-inference
provider (`{router}/hf-inference/models/{model}[/pipeline/feature-extraction]`), translated
to and from OpenAI's shapes.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from typing import Any

import aiohttp
import orjson

from ferro_proxy.errors import GatewayError, bad_request
from ferro_proxy.exchange import Exchange, Reply
from providers.base import ProviderSpec, read_error, transport_error
from providers.openai_compat import OpenAICompatProvider
from providers.registry import register_provider

DEFAULT_MODELS = (
    "meta-llama/Llama-3.3-70B-Instruct",
    "Qwen/Qwen2.5-72B-Instruct",
    "deepseek-ai/DeepSeek-V3",
    "sentence-transformers/all-MiniLM-L6-v2",
    "BAAI/bge-large-en-v1.5",
    "black-forest-labs/FLUX.1-schnell",
)


def encode_vector(vector: list[float], encoding_format: str | None) -> list[float] | str:
    if encoding_format == "base64":  # OpenAI's base64: float32 little-endian
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def mean_pool(vector: Any) -> list[float]:
    """A sentence vector from feature-extraction output: already pooled, or per token."""
    if vector and isinstance(vector[0], list):
        while vector and isinstance(vector[0], list) and vector[0] and isinstance(vector[0][0], list):
            vector = vector[0]  # [[tokens x dims]] from some models: drop the batch level
        width = len(vector[0])
        return [sum(tok[i] for tok in vector) / len(vector) for i in range(width)]
    return vector


class HuggingFaceProvider(OpenAICompatProvider):
    default_models = tuple(DEFAULT_MODELS)

    @property
    def router_root(self) -> str:
        """The router host: the chat base URL without its trailing /v1."""
        base = self.settings.base_url
        return base[: -len("/v1")] if base.endswith("/v1") else base

    async def _post_native(
        self, ex: Exchange, url: str, payload: dict[str, Any], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        headers = {"Content-Type": "application/json", **self.settings.headers, **self.auth_headers(ex)}
        try:
            resp = await self.session.post(url, data=orjson.dumps(payload), headers=headers, timeout=timeout)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(self.name, exc) from None
        if resp.status >= 400:
            err = await read_error(self.name, resp)
            resp.release()
            raise err
        return resp

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        try:
            return await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_error(self.name, exc) from None
        finally:
            resp.release()

    async def embeddings(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        model = str(body.get("model") or "")
        raw_input = body.get("input")
        texts = raw_input if isinstance(raw_input, list) else [raw_input]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise bad_request("hugging-face embeddings take a string or a list of strings", param="input")
        url = f"{self.router_root}/hf-inference/models/{model}/pipeline/feature-extraction"
        resp = await self._post_native(ex, url, {"inputs": texts}, timeout)
        try:
            vectors = orjson.loads(await self._read(resp))
        except orjson.JSONDecodeError:
            vectors = None
        if not isinstance(vectors, list) or len(vectors) != len(texts):
            raise GatewayError(
                502,
                f"{self.name} sent feature-extraction output of an unexpected shape",
                code="upstream_bad_response",
            )
        fmt = body.get("encoding_format")
        # feature-extraction reports no token counts: usage stays 0 (unknown), never a guess.
        return Reply(
            200,
            data={
                "object": "list",
                "model": model,
                "data": [
                    {"object": "embedding", "index": i, "embedding": encode_vector(mean_pool(v), fmt)}
                    for i, v in enumerate(vectors)
                ],
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            },
        )

    async def images(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        model = str(body.get("model") or "")
        if not model:
            raise bad_request("model is required (a text-to-image model id)", param="model")
        parameters: dict[str, Any] = {}
        size = body.get("size")
        if isinstance(size, str) and "x" in size:
            width, _, height = size.partition("x")
            if width.isdigit() and height.isdigit():
                parameters = {"width": int(width), "height": int(height)}
        payload: dict[str, Any] = {"inputs": body.get("prompt")}
        if parameters:
            payload["parameters"] = parameters
        url = f"{self.router_root}/hf-inference/models/{model}"

        async def one() -> tuple[bytes, str]:
            resp = await self._post_native(ex, url, payload, timeout)
            mime = resp.headers.get("Content-Type", "image/png").split(";")[0]
            return await self._read(resp), mime

        images = await asyncio.gather(*(one() for _ in range(int(body.get("n") or 1))))
        items = []
        for data, mime in images:
            b64 = base64.b64encode(data).decode()
            items.append(
                {"b64_json": b64}
                if body.get("response_format") == "b64_json"
                else {"url": f"data:{mime};base64,{b64}"}
            )
        return Reply(200, data={"created": int(time.time()), "data": items})


register_provider(
    ProviderSpec(
        name="hugging-face",
        display="Hugging Face",
        factory=HuggingFaceProvider,
        default_base_url="https://router.huggingface.co/v1",
        env_key="HUGGING_FACE_API_KEY",
        env_base_url="HUGGING_FACE_BASE_URL",
        version_segment="/v1",
        model_prefixes=(
            "meta-llama/",
            "Qwen/",
            "mistralai/",
            "deepseek-ai/",
            "google/gemma",
            "microsoft/",
            "HuggingFaceH4/",
            "HuggingFaceTB/",
            "sentence-transformers/",
            "BAAI/",
            "intfloat/",
            "black-forest-labs/",
            "stabilityai/",
            "moonshotai/",
            "zai-org/",
        ),
        capabilities=frozenset({"chat", "stream", "tools", "vision", "embeddings", "images"}),
        hosts=("router.huggingface.co",),
    )
)
