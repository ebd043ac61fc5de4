"""The sidecar injector: AdmissionReviews for typical pods give the expected JSONPatch, and
the patched pod is a valid Pod for Kubernetes 1.30 (kubernetes-validate --strict)."""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import sys

import aiohttp
import jsonpatch
import pytest
from aiohttp import web

from ferro_proxy.k8s.inject import InjectorSettings, patch_for
from ferro_proxy.k8s.webhook import create_app


def pod(containers=1, labels=None, annotations=None, init=None, env=None):
    spec = {
        "containers": [
            {"name": f"app{i}", "image": "python:3.12-slim", **({"env": env} if env and i == 0 else {})}
            for i in range(containers)
        ]
    }
    if init:
        spec["initContainers"] = init
    meta = {
        "name": "demo",
        "namespace": "apps",
        "labels": labels if labels is not None else {"ferro-proxy.io/inject": "true"},
    }
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def review(obj, uid="u-1"):
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "apps",
            "operation": "CREATE",
            "object": obj,
        },
    }


@pytest.fixture
async def webhook():
    runner = web.AppRunner(create_app(InjectorSettings(image="registry.local/ferro-proxy:1.2.3")))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def admit(url, obj, query=""):
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/mutate" + query, json=review(obj)) as r:
            assert r.status == 200
            body = await r.json()
    resp = body["response"]
    assert body["kind"] == "AdmissionReview" and resp["uid"] == "u-1" and resp["allowed"] is True
    if "patch" not in resp:
        return None, resp
    assert resp["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(resp["patch"])), resp


def validate_pod(obj, tmp_path):
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(obj))
    proc = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.30.0", str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


async def test_single_container_gets_native_sidecar(webhook, tmp_path):
    original = pod()
    ops, _ = await admit(webhook, original)
    patched = jsonpatch.apply_patch(original, ops)
    sidecar = patched["spec"]["initContainers"][0]
    assert sidecar["name"] == "ferro-proxy" and sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "registry.local/ferro-proxy:1.2.3"
    assert "--listen" in sidecar["args"] and "127.0.0.1:8080" in sidecar["args"]
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/health"
    sc = sidecar["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["capabilities"] == {"drop": ["ALL"]}
    assert sidecar["envFrom"][0]["secretRef"]["name"] == "ferro-proxy-provider-keys"
    assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:8080/v1"} in patched["spec"]["containers"][
        0
    ]["env"]
    ann = patched["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "8081"
    assert ann["ferro-proxy.io/status"] == "injected"
    assert {v["name"] for v in patched["spec"]["volumes"]} == {"ferro-proxy-config", "ferro-proxy-tmp"}
    validate_pod(patched, tmp_path)


async def test_several_containers_and_existing_init_and_env(webhook, tmp_path):
    original = pod(
        containers=3,
        init=[{"name": "migrate", "image": "busybox"}],
        env=[{"name": "OPENAI_BASE_URL", "value": "http://keep-me/v1"}],
        annotations={"team": "a"},
    )
    ops, _ = await admit(webhook, original)
    patched = jsonpatch.apply_patch(original, ops)
    names = [c["name"] for c in patched["spec"]["initContainers"]]
    assert names == ["ferro-proxy", "migrate"], "the sidecar starts before other init containers"
    first_env = patched["spec"]["containers"][0]["env"]
    assert {"name": "OPENAI_BASE_URL", "value": "http://keep-me/v1"} in first_env
    assert [e["name"] for e in first_env].count("OPENAI_BASE_URL") == 1, "a container's own value is kept"
    for c in patched["spec"]["containers"][1:]:
        assert {e["name"] for e in c["env"]} == {"OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"}
    assert patched["metadata"]["annotations"]["team"] == "a"
    validate_pod(patched, tmp_path)


async def test_already_injected_pod_is_left_alone(webhook):
    original = pod()
    ops, _ = await admit(webhook, original)
    patched = jsonpatch.apply_patch(original, ops)
    again, _ = await admit(webhook, patched)
    assert again is None


@pytest.mark.parametrize("labels", [{}, {"ferro-proxy.io/inject": "false"}, {"ferro-proxy.io/inject": "yes"}])
async def test_pods_not_selected_are_not_touched(webhook, labels):
    ops, resp = await admit(webhook, pod(labels=labels))
    assert ops is None and resp["allowed"] is True


async def test_namespace_selection_and_pod_opt_out(webhook):
    ops, _ = await admit(webhook, pod(labels={}), "?selected_by=namespace")
    assert ops
    ops, _ = await admit(webhook, pod(labels={"ferro-proxy.io/inject": "false"}), "?selected_by=namespace")
    assert ops is None


async def test_annotations_override_per_pod(webhook, tmp_path):
    original = pod(
        annotations={
            "ferro-proxy.io/config-map": "team-a-gateway",
            "ferro-proxy.io/memory-limit": "512Mi",
            "ferro-proxy.io/cpu-request": "100m",
            "ferro-proxy.io/proxy-port": "9090",
            "ferro-proxy.io/native-sidecar": "false",
            "prometheus.io/port": "9999",
        }
    )
    ops, _ = await admit(webhook, original)
    patched = jsonpatch.apply_patch(original, ops)
    assert "initContainers" not in patched["spec"]
    sidecar = patched["spec"]["containers"][-1]
    assert sidecar["name"] == "ferro-proxy" and "restartPolicy" not in sidecar
    assert (
        sidecar["resources"]["limits"]["memory"] == "512Mi"
        and sidecar["resources"]["requests"]["cpu"] == "100m"
    )
    assert "127.0.0.1:9090" in sidecar["args"]
    assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:9090/v1"} in patched["spec"]["containers"][
        0
    ]["env"]
    cm = next(v for v in patched["spec"]["volumes"] if v["name"] == "ferro-proxy-config")
    assert cm["configMap"]["name"] == "team-a-gateway"
    assert patched["metadata"]["annotations"]["prometheus.io/port"] == "9999", "the pod's own annotation wins"
    validate_pod(patched, tmp_path)


async def test_bad_annotation_is_a_warning_not_a_refusal(webhook):
    ops, resp = await admit(webhook, pod(annotations={"ferro-proxy.io/proxy-port": "eighty"}))
    assert ops and resp["warnings"] == ["ferro-proxy.io/proxy-port: expected a port number, got 'eighty'"]


async def test_non_pod_and_garbage_requests(webhook):
    async with aiohttp.ClientSession() as s:
        async with s.post(webhook + "/mutate", data=b"nope") as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_admission_review"
        other = review({"kind": "ConfigMap"})
        other["request"]["kind"]["kind"] = "ConfigMap"
        async with s.post(webhook + "/mutate", json=other) as r:
            body = await r.json()
            assert body["response"] == {"uid": "u-1", "allowed": True}


def test_patch_is_pure():
    original = pod()
    snapshot = copy.deepcopy(original)
    patch_for(original, InjectorSettings())
    assert original == snapshot
