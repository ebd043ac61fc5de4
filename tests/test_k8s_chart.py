"""The Helm chart and the kustomize base: lint, render each mode, validate every object
against the Kubernetes 1.30 OpenAPI schemas (kubernetes-validate --strict), yamllint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.k8s_tools import tool

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "ferro-proxy"
# Custom resources have no schema in kubernetes-validate; they get a structural check instead.
CRD_KINDS = {"PodMonitor", "ServiceMonitor", "Certificate", "Issuer"}

MODES = {
    "defaults": [],
    "injector": ["--set", "injector.enabled=true"],
    "injector-cert-manager": ["--set", "injector.enabled=true", "--set", "injector.certManager.enabled=true"],
    "injector-legacy-sidecar": [
        "--set",
        "injector.enabled=true",
        "--set",
        "sidecar.nativeSidecar=false",
        "--set",
        "injector.failurePolicy=Fail",
        "--set",
        "injector.namespaceSelector=false",
    ],
    "gateway": ["--set", "gateway.enabled=true", "--set-string", "providerKeys.OPENAI_API_KEY=sk-x"],
    "gateway-no-hpa": [
        "--set",
        "gateway.enabled=true",
        "--set",
        "gateway.autoscaling.enabled=false",
        "--set",
        "gateway.pdb.enabled=false",
    ],
    "all-with-operator": [
        "--set",
        "injector.enabled=true",
        "--set",
        "gateway.enabled=true",
        "--set",
        "monitoring.prometheusOperator.enabled=true",
        "--set",
        "existingSecret=keys",
        "--set",
        "existingConfigMap=my-config",
    ],
}


def run(*cmd: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def validate(docs: list[dict], tmp_path: Path) -> None:
    files = []
    for i, doc in enumerate(docs):
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"].split("/")[0] in ("monitoring.coreos.com", "cert-manager.io")
            assert doc["metadata"]["name"] and isinstance(doc["spec"], dict)
            continue
        path = tmp_path / f"{i}-{doc['kind']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        files.append(str(path))
    out = run(sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.30.0", *files)
    assert out.count("passed") == len(files), out


def render(*args: str) -> list[dict]:
    text = run(tool("helm"), "template", "demo", str(CHART), "--namespace", "ferro", *args)
    return [d for d in yaml.safe_load_all(text) if d]


def test_helm_lint_strict():
    out = run(tool("helm"), "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("mode", sorted(MODES))
def test_render_and_validate(mode, tmp_path):
    docs = render(*MODES[mode])
    kinds = {d["kind"] for d in docs}
    validate(docs, tmp_path)
    if "injector" in mode or mode == "all-with-operator":
        assert {"MutatingWebhookConfiguration", "Deployment", "Service"} <= kinds
    if mode.startswith("gateway"):
        assert ("HorizontalPodAutoscaler" in kinds) == (mode == "gateway")
        assert ("PodDisruptionBudget" in kinds) == (mode == "gateway")
        assert "Secret" in kinds or mode == "gateway-no-hpa"
    if mode == "all-with-operator":
        assert {"PodMonitor", "ServiceMonitor"} <= kinds
        assert not any(d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config") for d in docs)


def test_webhook_config_selects_and_excludes():
    docs = render("--set", "injector.enabled=true")
    mwc = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")
    by_pod, by_ns = mwc["webhooks"]
    assert by_pod["objectSelector"] == {"matchLabels": {"ferro-proxy.io/inject": "true"}}
    assert by_pod["failurePolicy"] == "Ignore" and by_pod["sideEffects"] == "None"
    excluded = by_pod["namespaceSelector"]["matchExpressions"][0]["values"]
    assert "ferro" in excluded and "kube-system" in excluded, "the injector never injects its own namespace"
    assert by_ns["clientConfig"]["service"]["path"] == "/mutate?selected_by=namespace"
    assert {"key": "ferro-proxy.io/inject", "operator": "In", "values": ["true"]} in by_ns[
        "namespaceSelector"
    ]["matchExpressions"]
    secret = next(d for d in docs if d["kind"] == "Secret" and d["type"] == "kubernetes.io/tls")
    assert by_pod["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]


def test_injector_settings_match_the_python_schema():
    from ferro_proxy.config import convert
    from ferro_proxy.k8s.inject import InjectorSettings

    docs = render("--set", "injector.enabled=true", "--set", "sidecar.proxyPort=9000")
    cm = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("injector-settings")
    )
    settings = convert(InjectorSettings, yaml.safe_load(cm["data"]["settings.yaml"]))
    assert settings.proxy_port == 9000 and settings.config_map == "demo-ferro-proxy-config"
    assert settings.image.endswith(":0.1.0")


def test_gateway_config_is_rendered_into_the_configmap():
    docs = render("--set", "gatewayConfig.strategy.mode=loadbalance")
    cm = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "demo-ferro-proxy-config"
    )
    assert yaml.safe_load(cm["data"]["config.yaml"])["strategy"]["mode"] == "loadbalance"


def test_schema_rejects_bad_values():
    proc = subprocess.run(
        [tool("helm"), "template", "demo", str(CHART), "--set", "injector.failurePolicy=Sometimes"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "failurePolicy" in proc.stderr


def test_grafana_dashboard_is_valid_json_with_panels():
    docs = render()
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "grafana" in d["metadata"]["name"])
    dashboard = json.loads(cm["data"]["ferro-proxy.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "ferro_requests_total",
        "ferro_request_duration_seconds_bucket",
        "ferro_tokens_total",
        "ferro_cost_usd_total",
        "ferro_circuit_state",
        "ferro_cache_requests_total",
    ):
        assert metric in exprs


def test_template_mode_in_an_app_chart(tmp_path):
    work = tmp_path / "helm"
    shutil.copytree(ROOT / "deploy" / "helm", work)
    run(tool("helm"), "dependency", "build", str(work / "example-app"))
    text = run(tool("helm"), "template", "shop", str(work / "example-app"))
    docs = [d for d in yaml.safe_load_all(text) if d]
    app = next(d for d in docs if d["kind"] == "Deployment")
    spec = app["spec"]["template"]["spec"]
    assert spec["initContainers"][0]["name"] == "ferro-proxy"
    assert spec["initContainers"][0]["restartPolicy"] == "Always"
    assert spec["initContainers"][0]["envFrom"][0]["secretRef"]["name"] == "shop-ferro-proxy-provider-keys"
    assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:8080/v1"} in spec["containers"][0]["env"]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("ConfigMap", "shop-ferro-proxy-config") in names and (
        "Secret",
        "shop-ferro-proxy-provider-keys",
    ) in names
    validate(docs, tmp_path)


def test_kustomize_base_renders_and_validates(tmp_path):
    text = run(tool("kubectl"), "kustomize", str(ROOT / "deploy" / "k8s"))
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert {d["kind"] for d in docs} == {"Namespace", "ConfigMap", "Secret", "Deployment", "PodMonitor"}
    validate(docs, tmp_path)


def test_yamllint_on_values_and_rendered_output(tmp_path):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(
        run(
            tool("helm"),
            "template",
            "demo",
            str(CHART),
            "--set",
            "injector.enabled=true",
            "--set",
            "gateway.enabled=true",
        )
    )
    config = (
        "{extends: default, rules: {line-length: {max: 160, allow-non-breakable-inline-mappings: true}, document-start: disable, truthy: disable, "
        "comments: {min-spaces-from-content: 1}, braces: {max-spaces-inside: 1}, brackets: {max-spaces-inside: 1},"
        " indentation: {indent-sequences: whatever}}}"
    )
    targets = [
        str(CHART / "values.yaml"),
        str(CHART / "Chart.yaml"),
        str(rendered),
        *map(str, (ROOT / "deploy" / "k8s").glob("*.yaml")),
    ]
    run(sys.executable, "-m", "yamllint", "-s", "-d", config, *targets)
