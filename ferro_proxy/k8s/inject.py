"""Building the JSONPatch that adds the ferro-proxy sidecar to a pod.

Pure functions of (pod, injector settings): the webhook server calls `patch_for(pod, settings)`
and returns the result in an AdmissionReview. Per-pod annotations override the settings
(`ferro-proxy.io/config-map`, `…/secret`, `…/cpu-request`, `…/memory-limit`, `…/native-sidecar`, …).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import msgspec

from ferro_proxy.config import Base

PREFIX = "ferro-proxy.io/"
INJECT_LABEL = PREFIX + "inject"
STATUS_ANNOTATION = PREFIX + "status"
SIDECAR_NAME = "ferro-proxy"
CONFIG_VOLUME = "ferro-proxy-config"
TMP_VOLUME = "ferro-proxy-tmp"
CA_VOLUME = "ferro-proxy-ca"
INTERCEPT_ANNOTATION = PREFIX + "intercept"
IPTABLES_INIT_NAME = "ferro-proxy-iptables"
CONFIG_DIR = "/etc/ferro-proxy"


class Resources(Base):
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    cpu_limit: str | None = "1"
    memory_limit: str | None = "256Mi"


class InterceptSettings(Base):
    """For pods annotated `ferro-proxy.io/intercept`: "true" (proxy variables) or "transparent"."""

    ca_dir: str = "/var/run/ferro-proxy/ca"  # shared with the app containers (read-only there)
    no_proxy: str = "localhost,127.0.0.1,::1,.svc,.svc.cluster.local,.cluster.local"
    transparent_port: int = 15001
    init_image: str | None = None  # the iptables init container; default: the sidecar image


class InjectorSettings(Base):
    """What the injector adds; rendered by the Helm chart from values into the injector's config."""

    image: str = "ghcr.io/ferro-proxy/ferro-proxy:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    config_map: str = "ferro-proxy-config"
    secret: str | None = "ferro-proxy-provider-keys"
    proxy_port: int = 8080
    admin_port: int = 8081
    native_sidecar: bool = True
    resources: Resources = msgspec.field(default_factory=Resources)
    run_as_user: int = 10001
    drain_seconds: int = 20
    log_level: str = "info"
    # Environment set on the app containers (not overwritten when the container sets it).
    app_env: dict[str, str] = msgspec.field(
        default_factory=lambda: {
            "OPENAI_BASE_URL": "http://127.0.0.1:{proxy_port}/v1",
            "ANTHROPIC_BASE_URL": "http://127.0.0.1:{proxy_port}",
        }
    )
    prometheus_annotations: bool = True
    intercept: InterceptSettings = msgspec.field(default_factory=InterceptSettings)


@dataclass
class Overrides:
    config_map: str | None = None
    secret: str | None = None
    proxy_port: int | None = None
    admin_port: int | None = None
    native_sidecar: bool | None = None
    cpu_request: str | None = None
    memory_request: str | None = None
    cpu_limit: str | None = None
    memory_limit: str | None = None
    image: str | None = None
    problems: list[str] = field(default_factory=list)


_ANNOTATIONS = {
    "config-map": "config_map",
    "secret": "secret",
    "proxy-port": "proxy_port",
    "admin-port": "admin_port",
    "native-sidecar": "native_sidecar",
    "cpu-request": "cpu_request",
    "memory-request": "memory_request",
    "cpu-limit": "cpu_limit",
    "memory-limit": "memory_limit",
    "image": "image",
}


def read_overrides(annotations: dict[str, str]) -> Overrides:
    out = Overrides()
    types = {f.name: f.type for f in fields(Overrides)}
    for suffix, attr in _ANNOTATIONS.items():
        value = annotations.get(PREFIX + suffix)
        if value is None:
            continue
        kind = types[attr]
        if "int" in str(kind):
            if not value.isdigit() or not 0 < int(value) < 65536:
                out.problems.append(f"{PREFIX}{suffix}: expected a port number, got {value!r}")
                continue
            setattr(out, attr, int(value))
        elif "bool" in str(kind):
            if value.lower() not in ("true", "false"):
                out.problems.append(f"{PREFIX}{suffix}: expected true or false, got {value!r}")
                continue
            setattr(out, attr, value.lower() == "true")
        else:
            setattr(out, attr, value)
    return out


def is_selected(pod: dict[str, Any], namespace_labels: dict[str, str] | None = None) -> bool:
    """Selected by the pod label, or by the namespace label unless the pod opts out."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    pod_choice = labels.get(INJECT_LABEL)
    if pod_choice is not None:
        return pod_choice == "true"
    return (namespace_labels or {}).get(INJECT_LABEL) == "true"


def already_injected(pod: dict[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    names = {c.get("name") for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])}
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return SIDECAR_NAME in names or annotations.get(STATUS_ANNOTATION) == "injected"


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def sidecar_container(settings: InjectorSettings, o: Overrides, native: bool) -> dict[str, Any]:
    proxy_port = o.proxy_port or settings.proxy_port
    admin_port = o.admin_port or settings.admin_port
    requests = {
        "cpu": o.cpu_request or settings.resources.cpu_request,
        "memory": o.memory_request or settings.resources.memory_request,
    }
    limits = {}
    if o.cpu_limit or settings.resources.cpu_limit:
        limits["cpu"] = o.cpu_limit or settings.resources.cpu_limit
    if o.memory_limit or settings.resources.memory_limit:
        limits["memory"] = o.memory_limit or settings.resources.memory_limit
    secret = o.secret if o.secret is not None else settings.secret

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": "ferro-admin"},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 2,
        }

    container: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": o.image or settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": [
            "--config",
            f"{CONFIG_DIR}/config.yaml",
            "--listen",
            f"127.0.0.1:{proxy_port}",
            "--admin-listen",
            f"0.0.0.0:{admin_port}",
            "--drain-seconds",
            str(settings.drain_seconds),
        ],
        "env": [{"name": "LOG_LEVEL", "value": settings.log_level}],
        "ports": [{"name": "ferro-admin", "containerPort": admin_port, "protocol": "TCP"}],
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
        "startupProbe": probe("/ready", 1, 30),
        "readinessProbe": probe("/ready", 5, 2),
        "livenessProbe": probe("/health", 10, 3),
        "resources": {"requests": requests, **({"limits": limits} if limits else {})},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if secret:
        container["envFrom"] = [{"secretRef": {"name": secret, "optional": True}}]
    if native:  # a native sidecar: ready before the app starts, stopped after it
        container["restartPolicy"] = "Always"
    return container


def patch_for(
    pod: dict[str, Any], settings: InjectorSettings, namespace_labels: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """(JSONPatch operations, warnings). An empty patch means: leave the pod alone."""
    if not is_selected(pod, namespace_labels) or already_injected(pod):
        return [], []
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    o = read_overrides(annotations)
    native = o.native_sidecar if o.native_sidecar is not None else settings.native_sidecar
    proxy_port = o.proxy_port or settings.proxy_port
    admin_port = o.admin_port or settings.admin_port
    spec = pod.get("spec") or {}
    ops: list[dict[str, Any]] = []

    mode = annotations.get(INTERCEPT_ANNOTATION, "false").strip().lower()
    if mode not in ("true", "transparent", "false"):
        o.problems.append(f"{INTERCEPT_ANNOTATION}: expected true, transparent or false, got {mode!r}")
        mode = "false"
    sidecar = sidecar_container(settings, o, native)
    if mode != "false":
        add_intercept_to_sidecar(sidecar, settings, mode)
        if not native:
            o.problems.append(
                f"{INTERCEPT_ANNOTATION}: without a native sidecar the app may start before the CA bundle exists"
            )
    if native:
        if spec.get("initContainers"):
            ops.append({"op": "add", "path": "/spec/initContainers/0", "value": sidecar})
        else:
            ops.append({"op": "add", "path": "/spec/initContainers", "value": [sidecar]})
    else:
        ops.append({"op": "add", "path": "/spec/containers/-", "value": sidecar})
    if mode == "transparent":  # first of all: the redirect is in place before anything runs
        init = iptables_init_container(settings, o)
        if native or spec.get("initContainers"):
            ops.append({"op": "add", "path": "/spec/initContainers/0", "value": init})
        else:
            ops.append({"op": "add", "path": "/spec/initContainers", "value": [init]})

    volumes = [
        {
            "name": CONFIG_VOLUME,
            "configMap": {"name": o.config_map or settings.config_map, "optional": False},
        },
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    if mode != "false":
        volumes.append({"name": CA_VOLUME, "emptyDir": {"sizeLimit": "2Mi"}})
    if spec.get("volumes"):
        ops.extend({"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes)
    else:
        ops.append({"op": "add", "path": "/spec/volumes", "value": volumes})

    app_env = {k: v.format(proxy_port=proxy_port) for k, v in settings.app_env.items()}
    if mode != "false":
        app_env.update(intercept_app_env(settings, mode, proxy_port))
    ca_mount = {"name": CA_VOLUME, "mountPath": settings.intercept.ca_dir, "readOnly": True}
    for i, container in enumerate(spec.get("containers") or []):
        if mode != "false":
            if container.get("volumeMounts"):
                ops.append({"op": "add", "path": f"/spec/containers/{i}/volumeMounts/-", "value": ca_mount})
            else:
                ops.append({"op": "add", "path": f"/spec/containers/{i}/volumeMounts", "value": [ca_mount]})
            uid = (container.get("securityContext") or {}).get("runAsUser")
            if mode == "transparent" and uid == settings.run_as_user:
                o.problems.append(
                    f"container {container.get('name')!r} runs as the gateway's user {uid}: "
                    "its traffic is not redirected"
                )
        present = {e.get("name") for e in container.get("env") or []}
        missing = [{"name": k, "value": v} for k, v in app_env.items() if k not in present]
        if not missing:
            continue
        if container.get("env"):
            ops.extend({"op": "add", "path": f"/spec/containers/{i}/env/-", "value": e} for e in missing)
        else:
            ops.append({"op": "add", "path": f"/spec/containers/{i}/env", "value": missing})

    new_annotations = {STATUS_ANNOTATION: "injected"}
    if settings.prometheus_annotations:
        for key, value in (
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", str(admin_port)),
            ("prometheus.io/path", "/metrics"),
        ):
            if key not in annotations:
                new_annotations[key] = value
    if "annotations" not in metadata or metadata.get("annotations") is None:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": new_annotations})
    else:
        ops.extend(
            {"op": "add", "path": f"/metadata/annotations/{_escape(k)}", "value": v}
            for k, v in new_annotations.items()
        )
    return ops, o.problems


# ---------------------------------------------------------------- interception


def add_intercept_to_sidecar(sidecar: dict[str, Any], settings: InjectorSettings, mode: str) -> None:
    """Switch interception on in the sidecar, with its CA in the volume the apps read."""
    cfg = settings.intercept
    sidecar["env"] += [
        {"name": "FERRO_INTERCEPT", "value": "true"},
        {"name": "FERRO_INTERCEPT_CA_DIR", "value": cfg.ca_dir},
    ]
    if mode == "transparent":
        sidecar["env"].append(
            {"name": "FERRO_TRANSPARENT_LISTEN", "value": f"127.0.0.1:{cfg.transparent_port}"}
        )
    sidecar["volumeMounts"].append({"name": CA_VOLUME, "mountPath": cfg.ca_dir})


def intercept_app_env(settings: InjectorSettings, mode: str, proxy_port: int) -> dict[str, str]:
    """The proxy variables (proxy mode) and the CA bundle variables every TLS stack reads."""
    bundle = f"{settings.intercept.ca_dir}/bundle.pem"
    env: dict[str, str] = {}
    if mode == "true":
        proxy = f"http://127.0.0.1:{proxy_port}"
        no_proxy = settings.intercept.no_proxy
        env.update({"HTTPS_PROXY": proxy, "https_proxy": proxy, "NO_PROXY": no_proxy, "no_proxy": no_proxy})
    env.update(
        {
            "SSL_CERT_FILE": bundle,  # OpenSSL, Python ssl/httpx, Go, Ruby
            "REQUESTS_CA_BUNDLE": bundle,  # Python requests
            "CURL_CA_BUNDLE": bundle,
            "NODE_EXTRA_CA_CERTS": f"{settings.intercept.ca_dir}/ca.pem",  # added to Node's own roots
        }
    )
    return env


def iptables_init_container(settings: InjectorSettings, o: Overrides) -> dict[str, Any]:
    """Applies `ferro-proxy intercept-rules` (every :443 destination to the transparent
    listener, the gateway's own user excluded) with NET_ADMIN, then exits."""
    cfg = settings.intercept
    script = (
        f"ferro-proxy intercept-rules --all-destinations --redirect-port {cfg.transparent_port} "
        f"--uid {settings.run_as_user} | sh"
    )
    return {
        "name": IPTABLES_INIT_NAME,
        "image": cfg.init_image or o.image or settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["sh", "-c", script],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }
