"""The platform's lazy client getters reach the local cloud's emulators through the real Google
libraries, are created once per instance, and are not created at import."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulators import services
from emulators.vertex_standin import VertexStandin
from shared import clients
from tests.integration.listeners import listen

PROJECT = "clients-project"


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    run_dir: Path = tmp_path_factory.mktemp("clients")
    firestore = services.start_firestore_emulator(run_dir, PROJECT)
    gcs = services.start_fake_gcs(run_dir, PROJECT, None, ["uploads"], None)
    standin = VertexStandin().start()
    try:
        yield {"FIRESTORE_EMULATOR_HOST": firestore.host, "STORAGE_EMULATOR_HOST": gcs.url,
               "GENAI_BASE_URL": standin.url}
    finally:
        standin.stop()
        gcs.stop()
        firestore.stop()


@pytest.fixture
def env(backends: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("APP_ENV", "test")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    for key, value in backends.items():
        monkeypatch.setenv(key, value)
    clients.reset()
    yield
    clients.reset()


def test_clients_are_built_once_and_lazily(env: None) -> None:
    assert clients.storage_client.cache_info().currsize == 0
    assert clients.storage_client() is clients.storage_client()
    assert clients.genai_client() is clients.genai_client()


def test_storage_client_reaches_fake_gcs(env: None) -> None:
    bucket = clients.storage_client().bucket("uploads")
    blob = bucket.blob(f"t/{uuid.uuid4().hex}.txt")
    blob.upload_from_string(b"hello", content_type="text/plain")
    assert bucket.blob(blob.name).download_as_bytes() == b"hello"


def test_firestore_client_write_is_seen_by_a_listener(env: None) -> None:
    doc = clients.firestore_client().collection("feeds").document(uuid.uuid4().hex)
    seen = threading.Event()

    def on_snapshot(snapshots, _changes, _read_time) -> None:
        if any(s.exists and s.to_dict() == {"n": 1} for s in snapshots):
            seen.set()

    watch = listen(doc, on_snapshot)
    try:
        doc.set({"n": 1})
        assert seen.wait(timeout=15)
    finally:
        watch.unsubscribe()


def test_genai_client_generates_and_streams_against_the_standin(env: None) -> None:
    from google.genai import types

    client = clients.genai_client()
    config = types.GenerateContentConfig(system_instruction="You are Mina, a cheerful barista.")
    reply = client.models.generate_content(model="gemini-2.5-flash", contents="hello there",
                                           config=config)
    assert reply.text == "[You are Mina, a cheerful barista.] echo: hello there"
    assert reply.usage_metadata is not None and reply.usage_metadata.total_token_count
    chunks = list(client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="hello there", config=config))
    assert len(chunks) > 1
    assert "".join(c.text or "" for c in chunks) == reply.text
