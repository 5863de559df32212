"""Google clients, each created lazily once per instance by a cached getter.

Heavy SDKs are imported inside the getters so a function pays for them only when it uses them.
Emulator hosts (PUBSUB_EMULATOR_HOST, FIRESTORE_EMULATOR_HOST, STORAGE_EMULATOR_HOST,
GENAI_BASE_URL) are read when a client is first built; tests call `reset()` after changing them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.config import get_settings
from shared.lazy import instance_cache

if TYPE_CHECKING:
    from google.cloud import firestore, pubsub_v1, storage  # type: ignore[attr-defined]
    from google.genai import Client as GenaiClient


PUBLISH_BATCH_LATENCY_S = 0.001


@instance_cache
def publisher() -> pubsub_v1.PublisherClient:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    # The client honours PUBSUB_EMULATOR_HOST itself (insecure channel, no credentials).
    # Batches close after 1 ms, not the default 10 ms: requests wait for their publish after
    # commit (shared.outbox), and a loop of publishes still shares one batch.
    return pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_latency=PUBLISH_BATCH_LATENCY_S))


@instance_cache
def storage_client() -> storage.Client:
    from google.cloud import storage  # type: ignore[attr-defined]

    settings = get_settings()
    if settings.storage_base_url:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=settings.project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": settings.storage_base_url},
        )
    return storage.Client(project=settings.project)


@instance_cache
def firestore_client() -> firestore.Client:
    from google.cloud import firestore

    return firestore.Client(project=get_settings().project)


@instance_cache
def genai_client() -> GenaiClient:
    from google import genai
    from google.genai import types

    settings = get_settings()
    kwargs: dict[str, Any] = {}
    if settings.genai_base_url:
        # Local Vertex AI stand-in: any bearer token is accepted; AnonymousCredentials is not.
        from google.oauth2.credentials import Credentials

        kwargs["credentials"] = Credentials(token="local")  # type: ignore[no-untyped-call]  # noqa: S106
        kwargs["http_options"] = types.HttpOptions(base_url=settings.genai_base_url)
    return genai.Client(
        vertexai=True, project=settings.project, location=settings.genai_location, **kwargs
    )


def topic_path(topic: str) -> str:
    return f"projects/{get_settings().project}/topics/{topic}"


def reset() -> None:
    """Forget every cached client, key and the settings (tests, after changing the environment)."""
    from shared import auth, db, tokens

    for getter in (publisher, storage_client, firestore_client, genai_client, db.engine,
                   db.autocommit_engine,
                   auth.own_resolver, auth.external_resolver, tokens.signing_keys):
        getter.cache_clear()
    from shared import storage_signing

    storage_signing.reset()
    get_settings.cache_clear()
