"""The sidecar injector: an HTTPS endpoint answering admission.k8s.io/v1 AdmissionReview.

`POST /mutate?selected_by=pod|namespace` returns the review with a base64 JSONPatch that adds
the ferro-proxy sidecar (see `inject.patch_for`). It never refuses a pod: anything it cannot
or should not mutate is allowed unchanged, with a warning when an annotation was invalid.
"""

from __future__ import annotations

import base64
import logging
import ssl
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web

from ferro_proxy.config import ConfigError, convert
from ferro_proxy.k8s.inject import INJECT_LABEL, InjectorSettings, patch_for

log = logging.getLogger("ferro_proxy.inject")

SETTINGS = web.AppKey("settings", InjectorSettings)


def load_settings(path: str | None) -> InjectorSettings:
    if not path:
        return InjectorSettings()
    data = yaml.safe_load(Path(path).read_text()) or {}
    return convert(InjectorSettings, data, source=path)


def review_response(review: dict[str, Any], settings: InjectorSettings, selected_by: str) -> dict[str, Any]:
    request = review.get("request") or {}
    uid = request.get("uid", "")
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    pod = request.get("object")
    if (
        request.get("kind", {}).get("kind") == "Pod"
        and isinstance(pod, dict)
        and request.get("operation") in ("CREATE", None)
    ):
        namespace_labels = {INJECT_LABEL: "true"} if selected_by == "namespace" else None
        ops, warnings = patch_for(pod, settings, namespace_labels)
        if ops:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(orjson.dumps(ops)).decode()
        if warnings:
            response["warnings"] = warnings
        name = (pod.get("metadata") or {}).get("name") or (pod.get("metadata") or {}).get("generateName", "?")
        log.info(
            "admission",
            extra={
                "fields": {
                    "pod": name,
                    "namespace": request.get("namespace"),
                    "injected": bool(ops),
                    "warnings": warnings,
                }
            },
        )
    return {
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": response,
    }


async def mutate(request: web.Request) -> web.Response:
    try:
        review = orjson.loads(await request.read())
        if not isinstance(review, dict) or not isinstance(review.get("request"), dict):
            raise ValueError("not an AdmissionReview")
    except (orjson.JSONDecodeError, ValueError) as exc:
        return web.json_response(
            {
                "error": {
                    "message": f"bad AdmissionReview: {exc}",
                    "type": "invalid_request_error",
                    "code": "invalid_admission_review",
                }
            },
            status=400,
        )
    selected_by = request.query.get("selected_by", "pod")
    body = review_response(review, request.app[SETTINGS], selected_by)
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(settings: InjectorSettings) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[SETTINGS] = settings
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    return app


def ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def run(listen: str, cert: str | None, key: str | None, settings_path: str | None) -> int:
    from ferro_proxy.jsonlog import setup_logging
    from ferro_proxy.server import parse_listen

    setup_logging("info")
    try:
        settings = load_settings(settings_path)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"ferro-proxy inject-webhook: {settings_path}: {line}")
        return 2
    host, port = parse_listen(listen, 8443)
    ctx = ssl_context(cert, key) if cert and key else None
    if ctx is None:
        log.warning("serving the injector without TLS: the Kubernetes API server only calls HTTPS webhooks")
    web.run_app(create_app(settings), host=host, port=port, ssl_context=ctx, access_log=None, print=None)
    return 0
