"""V4 signed URLs for the uploads bucket, with or without a key file.

Locally (`STORAGE_SIGNING_KEY`, a service-account JSON the local cloud generates) the URL is
signed in process with that key. Deployed functions have no key file: their credentials come from
the metadata server, and the signature comes from the IAM Credentials API (`signBlob`) as the
function's own service account, which needs `roles/iam.serviceAccountTokenCreator` on itself
(the manifest's `signs_urls`). google-cloud-storage takes that path when it is given
`service_account_email` and `access_token`.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from functools import cache
from typing import TYPE_CHECKING, Any

from shared.config import get_settings

if TYPE_CHECKING:
    from google.cloud.storage import Blob  # type: ignore[attr-defined]

_refresh_lock = threading.Lock()


@cache
def _key_credentials() -> Any:
    import json

    from google.oauth2 import service_account

    info = json.loads(get_settings().storage_signing_key or "{}")
    return service_account.Credentials.from_service_account_info(info)  # type: ignore[no-untyped-call]


@cache
def _default_credentials() -> Any:
    import google.auth

    credentials, _project = google.auth.default(  # type: ignore[no-untyped-call]
        scopes=["https://www.googleapis.com/auth/cloud-platform"])
    return credentials


def _iam_signer() -> dict[str, Any]:
    """The email and a fresh access token of the runtime service account (refreshed when
    expired; compute credentials learn their real email on the first refresh)."""
    import google.auth.transport.requests

    credentials = _default_credentials()
    with _refresh_lock:
        if not credentials.valid:
            credentials.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
    return {"service_account_email": credentials.service_account_email,
            "access_token": credentials.token}


def signer_kwargs() -> dict[str, Any]:
    """How `generate_signed_url` signs here: with the local key, or through IAM signBlob."""
    settings = get_settings()
    kwargs: dict[str, Any] = {}
    if settings.storage_base_url:
        kwargs["api_access_endpoint"] = settings.storage_base_url
    if settings.storage_signing_key:
        return kwargs | {"credentials": _key_credentials()}
    return kwargs | _iam_signer()


def signed_url(blob: Blob, method: str, ttl: timedelta, *, content_type: str | None = None,
               headers: dict[str, str] | None = None,
               response_disposition: str | None = None) -> str:
    """A V4 signed URL for `method` on `blob`, valid for `ttl`; `content_type` and `headers`
    become part of the signature, so the client must send exactly those."""
    url: str = blob.generate_signed_url(
        version="v4", method=method, expiration=ttl, content_type=content_type,
        headers=headers, response_disposition=response_disposition, **signer_kwargs())
    return url


def reset() -> None:
    """Forget cached credentials (tests, after changing the environment)."""
    _key_credentials.cache_clear()
    _default_credentials.cache_clear()
