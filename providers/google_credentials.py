"""Which Google credential Vertex AI uses, decided from the configuration alone (no I/O).

In order, the first that is configured wins:
1. `service_account_json` / `VERTEX_AI_SERVICE_ACCOUNT_JSON` (the JSON or a path);
2. an API key (`api_key` / `VERTEX_AI_API_KEY`), sent as `x-goog-api-key`;
3. `GOOGLE_APPLICATION_CREDENTIALS`: a `service_account` key file, or an `external_account`
   file (workload identity federation, `providers.google_external`);
4. the metadata server (`providers.gce_metadata`), for GKE Workload Identity, GCE and
   Cloud Run — but only when told to: `credentials: metadata` in the provider's config,
   `VERTEX_AI_USE_METADATA=true`, or `GCE_METADATA_HOST` set. A pod that is not on Google
   Cloud never tries to reach a metadata host.

`credentials:` in the provider's config names one source and skips the rest:
`auto` (the default, the chain above), `service_account`, `api_key`,
`application_credentials` or `metadata`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from ferro_proxy import redaction
from ferro_proxy.config import ProviderSettings
from providers.gce_metadata import HOST_ENV, MetadataServer, metadata_root
from providers.google_auth import ServiceAccount, service_account_token
from providers.google_external import ExternalAccount, ExternalAccountTokens
from providers.token_cache import CachedToken

APPLICATION_CREDENTIALS_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
USE_METADATA_ENV = "VERTEX_AI_USE_METADATA"
SOURCES = ("auto", "service_account", "api_key", "application_credentials", "metadata")
_TRUE = ("1", "true", "yes", "on")


@dataclass
class GoogleCredentials:
    kind: str  # service_account | api_key | external_account | metadata | none
    tokens: CachedToken | None = None
    project_id: str | None = None  # from the credentials file
    metadata: MetadataServer | None = None  # asked for the project id when nothing else names it


def metadata_wanted(extra: ProviderSettings, env: Mapping[str, str]) -> bool:
    if extra.credentials == "metadata":
        return True
    flag = env.get(USE_METADATA_ENV)
    if flag:
        return flag.strip().lower() in _TRUE
    return bool(env.get(HOST_ENV))


def enabled_by_env(env: Mapping[str, str]) -> bool:
    """Whether the environment alone names an ambient credential Vertex can use."""
    flag = (env.get(USE_METADATA_ENV) or "").strip().lower()
    return (
        bool(env.get(APPLICATION_CREDENTIALS_ENV)) or flag in _TRUE or (not flag and bool(env.get(HOST_ENV)))
    )


def _application_credentials(path: str, provider: str) -> GoogleCredentials:
    """A `GOOGLE_APPLICATION_CREDENTIALS` file. Errors name the file's type, never its values."""
    try:
        data = orjson.loads(Path(path).expanduser().read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read the file it names ({type(exc).__name__})") from None
    except orjson.JSONDecodeError:
        raise ValueError("the file is not valid JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the file is not a JSON object")
    kind = data.get("type")
    if kind == "service_account":
        account = ServiceAccount.from_data(data)
        redaction.register(account.private_key)
        return GoogleCredentials(kind, service_account_token(account, provider), account.project_id)
    if kind == "external_account":
        external = ExternalAccount.from_data(data)
        redaction.register_many([external.client_secret, *external.source_headers.values()])
        return GoogleCredentials(
            kind, ExternalAccountTokens(external, provider).tokens(), external.project_id
        )
    raise ValueError(
        f"credentials of type {kind!r} are not supported (use service_account or external_account)"
    )


def resolve(
    settings_name: str, extra: ProviderSettings, env: Mapping[str, str], api_key: str | None
) -> GoogleCredentials:
    """The credential to use; ValueError (naming the setting) when the chosen one is broken."""
    source = extra.credentials or "auto"
    if source not in SOURCES:
        raise ValueError(f"credentials: {source!r} is not one of {', '.join(SOURCES)}")
    metadata = MetadataServer(metadata_root(env), settings_name) if metadata_wanted(extra, env) else None

    def pick(name: str) -> bool:
        return source in ("auto", name)

    account_setting = extra.service_account_json or env.get("VERTEX_AI_SERVICE_ACCOUNT_JSON")
    if account_setting and pick("service_account"):
        try:
            account = ServiceAccount.from_setting(account_setting)
        except ValueError as exc:
            raise ValueError(f"service_account_json: {exc}") from None
        redaction.register(account.private_key)
        return GoogleCredentials(
            "service_account", service_account_token(account, settings_name), account.project_id, metadata
        )
    if pick("api_key") and (api_key or source == "api_key"):  # no key: the client's own
        return GoogleCredentials("api_key", metadata=metadata)
    path = env.get(APPLICATION_CREDENTIALS_ENV)
    if path and pick("application_credentials"):
        try:
            found = _application_credentials(path, settings_name)
        except ValueError as exc:
            raise ValueError(f"credentials ({APPLICATION_CREDENTIALS_ENV}): {exc}") from None
        found.metadata = metadata
        return found
    if metadata is not None and pick("metadata"):
        return GoogleCredentials("metadata", metadata.tokens(), None, metadata)
    if source != "auto":
        raise ValueError(f"credentials: {source} is chosen but not configured")
    return GoogleCredentials("none")
