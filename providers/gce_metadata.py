"""The Google Compute Engine metadata server: the identity of a GCE VM, Cloud Run service or
GKE pod (Workload Identity: the GKE metadata server answers for the Google service account
bound to the pod's Kubernetes ServiceAccount).

`GET http://{host}/computeMetadata/v1/instance/service-accounts/default/token` with
`Metadata-Flavor: Google` answers `{"access_token", "expires_in", "token_type"}`;
`.../project/project-id` answers the project id as text. `{host}` is `GCE_METADATA_HOST`
(`host[:port]`) when set, else `metadata.google.internal`. The server echoes the
`Metadata-Flavor: Google` header; an answer without it did not come from a metadata server.

Nothing here probes the network to decide *whether* to use the server: the caller decides
that from the configuration (see `providers.google_credentials`).
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from providers.token_cache import CachedToken, auth_error, call_json, error_reason, lifetime_from

DEFAULT_HOST = "metadata.google.internal"
HOST_ENV = "GCE_METADATA_HOST"
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
PROJECT_PATH = "/computeMetadata/v1/project/project-id"
FLAVOR = {"Metadata-Flavor": "Google"}
SOURCE = "metadata server"
# The GKE metadata server can take a few seconds for a pod's first token.
TIMEOUT = aiohttp.ClientTimeout(total=15, connect=3)


def metadata_root(env: Mapping[str, str]) -> str:
    host = (env.get(HOST_ENV) or "").strip().rstrip("/") or DEFAULT_HOST
    if "://" in host:  # tolerated: some set it to a URL
        return host
    return "http://" + host


class MetadataServer:
    def __init__(self, root: str, provider: str) -> None:
        self.root = root
        self.provider = provider

    async def _get(self, session: aiohttp.ClientSession, path: str) -> tuple[int, object, bytes]:
        status, data, raw, headers = await call_json(
            session,
            "GET",
            self.root + path,
            headers=FLAVOR,
            provider=self.provider,
            source=SOURCE,
            timeout=TIMEOUT,
        )
        if status < 400 and headers.get("Metadata-Flavor") != "Google":
            raise auth_error(self.provider, SOURCE, f"{self.root} did not answer as a GCE metadata server")
        return status, data, raw

    async def fetch_token(self, session: aiohttp.ClientSession) -> tuple[str, float]:
        status, data, _ = await self._get(session, TOKEN_PATH)
        if status >= 400 or not isinstance(data, dict) or not data.get("access_token"):
            reason = error_reason(data, status) if status >= 400 else "no access_token in the answer"
            raise auth_error(self.provider, SOURCE, f"the token request failed ({status}): {reason}")
        return str(data["access_token"]), lifetime_from(data.get("expires_in"))

    async def project_id(self, session: aiohttp.ClientSession) -> str:
        status, _, raw = await self._get(session, PROJECT_PATH)
        project = raw.decode("utf-8", "replace").strip()
        if status >= 400 or not project:
            raise auth_error(self.provider, SOURCE, f"the project id request failed ({status})")
        return project

    def tokens(self) -> CachedToken:
        return CachedToken(self.fetch_token, f"{self.provider} {SOURCE}")
