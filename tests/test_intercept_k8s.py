"""Kubernetes hook-up of interception: the `ferro-proxy.io/intercept` annotation gives the
app the proxy and CA-bundle variables and the shared CA volume, "transparent" adds the
NET_ADMIN init container first; patched pods are valid Pods (kubernetes-validate --strict);
the chart carries the settings to the injector; the sidecar switches on from its env."""

from __future__ import annotations

import copy

import aiohttp
import jsonpatch
import yaml

from ferro_proxy.config import convert
from ferro_proxy.intercept.ca import BUNDLE_FILE
from ferro_proxy.k8s.inject import InjectorSettings, patch_for
from tests.test_k8s_chart import render
from tests.test_k8s_webhook import pod, validate_pod

SETTINGS = InjectorSettings(image="registry.local/ferro-proxy:1.2.3")


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env") or []}


def _patched(original: dict) -> tuple[dict, list[str]]:
    ops, problems = patch_for(copy.deepcopy(original), SETTINGS)
    return jsonpatch.apply_patch(original, ops), problems


def test_annotated_pod_gets_proxy_variables_and_the_ca(tmp_path) -> None:
    original = pod(
        containers=2,
        annotations={"ferro-proxy.io/intercept": "true"},
        env=[{"name": "NO_PROXY", "value": "internal.example"}],
    )
    patched, problems = _patched(original)
    validate_pod(patched, tmp_path)
    assert problems == []
    sidecar = patched["spec"]["initContainers"][0]
    assert _env(sidecar)["FERRO_INTERCEPT"] == "true"
    ca_dir = _env(sidecar)["FERRO_INTERCEPT_CA_DIR"]
    assert {"name": "ferro-proxy-ca", "mountPath": ca_dir} in sidecar["volumeMounts"]
    for app in patched["spec"]["containers"]:
        env = _env(app)
        assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://127.0.0.1:8080"
        assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == f"{ca_dir}/{BUNDLE_FILE}"
        assert env["NODE_EXTRA_CA_CERTS"] == f"{ca_dir}/ca.pem"
        assert "HTTP_PROXY" not in env  # plain-HTTP calls to other services stay direct
        assert {"name": "ferro-proxy-ca", "mountPath": ca_dir, "readOnly": True} in app["volumeMounts"]
    assert _env(patched["spec"]["containers"][0])["NO_PROXY"] == "internal.example"  # the app's own wins
    assert ".svc" in _env(patched["spec"]["containers"][1])["NO_PROXY"]
    assert {"name": "ferro-proxy-ca", "emptyDir": {"sizeLimit": "2Mi"}} in patched["spec"]["volumes"]


def test_transparent_pod_gets_the_iptables_init_container_first(tmp_path) -> None:
    original = pod(
        annotations={"ferro-proxy.io/intercept": "transparent"},
        init=[{"name": "migrate", "image": "busybox"}],
    )
    patched, problems = _patched(original)
    validate_pod(patched, tmp_path)
    assert problems == []
    names = [c["name"] for c in patched["spec"]["initContainers"]]
    assert names == ["ferro-proxy-iptables", "ferro-proxy", "migrate"]
    init = patched["spec"]["initContainers"][0]
    assert init["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    assert "intercept-rules" in init["command"][-1] and "--uid 10001" in init["command"][-1]
    assert "--redirect-port 15001" in init["command"][-1]
    assert _env(patched["spec"]["initContainers"][1])["FERRO_TRANSPARENT_LISTEN"] == "127.0.0.1:15001"
    app_env = _env(patched["spec"]["containers"][0])
    assert "HTTPS_PROXY" not in app_env and app_env["SSL_CERT_FILE"].endswith(BUNDLE_FILE)


def test_annotation_problems_are_reported() -> None:
    _, problems = patch_for(pod(annotations={"ferro-proxy.io/intercept": "yes please"}), SETTINGS)
    assert any("expected true, transparent or false" in p for p in problems)
    same_user = pod(annotations={"ferro-proxy.io/intercept": "transparent"})
    same_user["spec"]["containers"][0]["securityContext"] = {"runAsUser": 10001}
    _, problems = patch_for(same_user, SETTINGS)
    assert any("is not redirected" in p for p in problems)
    plain, _ = patch_for(pod(), SETTINGS)
    assert "ferro-proxy-ca" not in str(plain) and "HTTPS_PROXY" not in str(plain)


def test_chart_passes_intercept_settings_to_the_injector() -> None:
    docs = render(
        "--set",
        "injector.enabled=true",
        "--set",
        "sidecar.intercept.transparentPort=15555",
        "--set",
        "sidecar.intercept.initImage=registry.local/iptables:1",
    )
    settings_map = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-settings")
    )
    settings = convert(InjectorSettings, yaml.safe_load(settings_map["data"]["settings.yaml"]))
    assert settings.intercept.transparent_port == 15555
    assert settings.intercept.init_image == "registry.local/iptables:1"
    assert settings.intercept.ca_dir == "/var/run/ferro-proxy/ca"
    patched, _ = patch_for(pod(annotations={"ferro-proxy.io/intercept": "transparent"}), settings)
    init = next(op["value"] for op in patched if op["path"] == "/spec/initContainers/0")
    assert init["image"] == "registry.local/iptables:1" and "15555" in init["command"][-1]


async def test_sidecar_switches_interception_on_from_its_environment(
    gateway_factory, fake_openai, tmp_path
) -> None:
    ca_dir = tmp_path / "shared-ca"
    gw = await gateway_factory(
        {"providers": {"openai": {"base_url": fake_openai.base_url}}},  # the shared config says nothing
        env={"FERRO_INTERCEPT": "true", "FERRO_INTERCEPT_CA_DIR": str(ca_dir)},
    )
    assert (ca_dir / BUNDLE_FILE).exists()
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca_dir / BUNDLE_FILE))
    async with aiohttp.ClientSession() as s:
        async with s.post(
            "https://api.openai.com/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer sk-app-key-123456"},
            proxy=gw.proxy_url,
            ssl=ctx,
        ) as resp:
            assert resp.status == 200
    assert fake_openai.requests[-1].headers["Authorization"] == "Bearer sk-app-key-123456"
