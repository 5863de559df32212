"""Uploads against fake-gcs-server through the real google-cloud-storage client, with bucket
notifications arriving through the real Pub/Sub emulator, on a real migrated PostgreSQL.

The `upload` function runs in process (functions-framework's app); notifications are pulled
from the emulator and handed to the finalize logic exactly as the consumer does (the e2e tier
runs the deployed consumer behind the push bridge)."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage  # type: ignore[attr-defined]

from emulators import services
from shared import cards
from tests.integration.conftest import PROJECT, unique
from tests.integration.identity_fixtures import REPO, Identity

pytestmark = pytest.mark.timeout(180)

BUCKET = "uploads"
TOPIC = "uploads.finalized"
PNG = cards.placeholder_image(200)
MZ = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 200
ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 200


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory, pubsub_host: str
        ) -> Iterator[services.GcsHandle]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PUBSUB_EMULATOR_HOST", pubsub_host)
        publisher = pubsub_v1.PublisherClient()
        try:  # the topic must exist before fake-gcs-server publishes its first notification
            publisher.create_topic(name=publisher.topic_path(PROJECT, TOPIC))
        except gexc.AlreadyExists:
            pass
    handle = services.start_fake_gcs(tmp_path_factory.mktemp("gcs"), PROJECT, pubsub_host,
                                     [BUCKET], TOPIC)
    try:
        yield handle
    finally:
        handle.stop()


@dataclass
class Uploads:
    identity: Identity
    app: Any  # the upload function's Flask test client
    characters: Any
    bucket: Any  # a plain storage client's bucket, to look at what is stored
    subscriber: pubsub_v1.SubscriberClient
    subscription: str

    def user(self) -> tuple[str, dict[str, str]]:
        tokens = self.identity.signup()
        return tokens["user_id"], self.identity.bearer(tokens)

    def issue(self, auth: dict[str, str], **body: Any) -> Any:
        body = {"purpose": "avatar", "content_type": "image/png", "size": len(PNG)} | body
        return self.app.post("/uploads", json=body, headers=auth)

    def put(self, issued: dict[str, Any], data: bytes) -> requests.Response:
        upload = issued["upload"]
        return requests.put(upload["url"], data=data, headers=upload["headers"], timeout=30)

    def status(self, auth: dict[str, str], upload_id: str) -> dict[str, Any]:
        resp = self.app.get(f"/uploads/{upload_id}", headers=auth)
        assert resp.status_code == 200, resp.json
        return dict(resp.json)

    def pump(self, auth: dict[str, str], upload_id: str, timeout: float = 30) -> dict[str, Any]:
        """Deliver notifications to the finalize logic until `upload_id` is decided."""
        from shared.upload_finalize import ObjectEvent, finalize

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pulled = self.subscriber.pull(subscription=self.subscription, max_messages=10,
                                          timeout=10)
            for received in pulled.received_messages:
                message = received.message
                finalize(ObjectEvent.from_message(dict(message.attributes),
                                                  json.loads(message.data)))
                self.subscriber.acknowledge(subscription=self.subscription,
                                            ack_ids=[received.ack_id])
            current = self.status(auth, upload_id)
            if current["status"] != "pending":
                return current
        pytest.fail(f"upload {upload_id} was never finalized")

    def stored(self, user_id: str) -> list[str]:
        names = []
        for prefix in (f"quarantine/{user_id}/", f"users/{user_id}/"):
            names += [b.name for b in self.bucket.list_blobs(prefix=prefix)]
        return names


@pytest.fixture
def uploads(identity: Identity, gcs: services.GcsHandle, pubsub_host: str,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Uploads]:
    from functions_framework import create_app

    from shared import clients

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
    monkeypatch.setenv("STORAGE_SIGNING_KEY", services.local_signing_key(PROJECT))
    monkeypatch.setenv("UPLOADS_BUCKET", BUCKET)
    clients.reset()
    subscriber = pubsub_v1.SubscriberClient()
    subscription = subscriber.subscription_path(PROJECT, unique("uploads-it"))
    subscriber.create_subscription(name=subscription,
                                   topic=f"projects/{PROJECT}/topics/{TOPIC}")
    app = create_app("upload", str(REPO / "functions/upload/main.py"))
    characters = create_app("characters", str(REPO / "functions/characters/main.py"))
    reader = storage.Client(project=PROJECT, credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                            client_options={"api_endpoint": gcs.url})
    try:
        yield Uploads(identity, app.test_client(), characters.test_client(),
                      reader.bucket(BUCKET), subscriber, subscription)
    finally:
        subscriber.delete_subscription(subscription=subscription)
        subscriber.close()
        clients.reset()


def test_signed_url_upload_is_accepted_and_downloads_the_same_bytes(uploads: Uploads) -> None:
    user_id, auth = uploads.user()
    resp = uploads.issue(auth, filename="me.png")
    assert resp.status_code == 201, resp.json
    issued = resp.json
    assert issued["status"] == "pending" and issued["filename"] == "me.png"
    upload = issued["upload"]
    assert upload["method"] == "PUT"
    assert upload["headers"] == {"Content-Type": "image/png",
                                 "x-goog-content-length-range": f"{len(PNG)},{len(PNG)}",
                                 "x-goog-if-generation-match": "0"}
    url = urlsplit(upload["url"])
    query = parse_qs(url.query)
    # Server-chosen name under quarantine; the signature binds type, size and precondition.
    assert url.path == f"/{BUCKET}/quarantine/{user_id}/{issued['id']}"
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"]
    assert query["X-Goog-Expires"] == ["900"]
    assert query["X-Goog-SignedHeaders"] == [
        "content-type;host;x-goog-content-length-range;x-goog-if-generation-match"]

    assert uploads.put(issued, PNG).status_code == 200
    done = uploads.pump(auth, issued["id"])
    assert done["status"] == "accepted" and done["reason"] is None and done["size"] == len(PNG)
    download = requests.get(done["download"]["url"], timeout=30)
    assert download.status_code == 200 and download.content == PNG
    assert uploads.stored(user_id) == [f"users/{user_id}/avatar/{issued['id']}.png"]
    me = uploads.identity.users.get("/me", headers=auth).json
    assert me["avatar_upload_id"] == issued["id"]  # avatars are attached on acceptance
    (usage,) = uploads.identity.sql(
        "SELECT reserved_bytes, used_bytes, uploaded_bytes_total FROM upload_usage "
        "WHERE user_id = :u", u=user_id)
    assert usage == (0, len(PNG), len(PNG))
    # Others see an avatar in use, never the owner's other uploads.
    _, other = uploads.user()
    assert uploads.app.get(f"/uploads/{issued['id']}", headers=other).status_code == 200


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"content_type": "image/svg+xml"}, 422, "unsupported_type"),
    ({"content_type": "application/x-msdownload"}, 422, "unsupported_type"),
    ({"content_type": "application/pdf"}, 422, "unsupported_type"),  # not for avatars
    ({"size": 6 * 1024 * 1024}, 413, "file_too_large"),
    ({"size": 0}, 422, "empty_file"),
    ({"size": -5}, 422, "empty_file"),
    ({"filename": "../../x"}, 422, "invalid_filename"),
    ({"filename": "a\\b.png"}, 422, "invalid_filename"),
    ({"filename": "x\x07.png"}, 422, "invalid_filename"),
    ({"purpose": "character_avatar"}, 422, "character_required"),
    ({"character_id": str(uuid.uuid4())}, 422, "unexpected_character"),
])
def test_bad_requests_are_refused_before_any_url(uploads: Uploads, body: dict[str, Any],
                                                 status: int, code: str) -> None:
    user_id, auth = uploads.user()
    resp = uploads.issue(auth, **body)
    assert (resp.status_code, resp.json["code"]) == (status, code), resp.json
    assert uploads.identity.sql("SELECT id FROM uploads WHERE owner_id = :u", u=user_id) == []


def test_uploads_for_someone_elses_character_are_refused(uploads: Uploads) -> None:
    _, owner = uploads.user()
    _, intruder = uploads.user()
    public = uploads.characters.post("/characters", headers=owner,
                                     json={"name": "Pub", "visibility": "public"}).json
    private = uploads.characters.post("/characters", headers=owner, json={"name": "Priv"}).json
    for character, status, code in ((public, 403, "not_owner"),
                                    (private, 404, "character_not_found")):
        resp = uploads.issue(intruder, purpose="character_avatar", character_id=character["id"])
        assert (resp.status_code, resp.json["code"]) == (status, code)


def test_character_avatar_is_attached_and_avatar_ids_must_be_accepted_uploads(
        uploads: Uploads) -> None:
    _, auth = uploads.user()
    character = uploads.characters.post("/characters", headers=auth, json={"name": "Mina"}).json
    issued = uploads.issue(auth, purpose="character_avatar", character_id=character["id"]).json
    # Pending uploads (and made-up ids) cannot be set as avatars by hand.
    for upload_id in (issued["id"], str(uuid.uuid4())):
        resp = uploads.characters.patch(f"/characters/{character['id']}", headers=auth,
                                        json={"avatar_upload_id": upload_id})
        assert (resp.status_code, resp.json["code"]) == (422, "invalid_upload")
        resp = uploads.identity.users.patch("/me", headers=auth,
                                            json={"avatar_upload_id": upload_id})
        assert (resp.status_code, resp.json["code"]) == (422, "invalid_upload")
    uploads.put(issued, PNG)
    assert uploads.pump(auth, issued["id"])["status"] == "accepted"
    shown = uploads.characters.get(f"/characters/{character['id']}", headers=auth).json
    assert shown["avatar_upload_id"] == issued["id"]
    # An accepted character avatar is not a profile picture.
    resp = uploads.identity.users.patch("/me", headers=auth,
                                        json={"avatar_upload_id": issued["id"]})
    assert resp.status_code == 422
    created = uploads.characters.post("/characters", headers=auth, json={
        "name": "Twin", "avatar_upload_id": issued["id"]})
    assert created.status_code == 201, created.json
    # Others cannot read the avatar of a private character.
    _, other = uploads.user()
    assert uploads.app.get(f"/uploads/{issued['id']}", headers=other).status_code == 404


@pytest.mark.parametrize(("declared", "data", "reason"), [
    ({}, MZ, "type_mismatch"),  # a Windows executable named .png
    ({}, ELF, "type_mismatch"),  # a Linux executable named .png
    ({"content_type": "image/jpeg"}, PNG, "type_mismatch"),  # declared JPEG, is PNG
    ({"purpose": "attachment", "content_type": "text/plain"}, MZ, "type_mismatch"),
    ({"size": len(PNG) + 10}, PNG, "size_mismatch"),  # fake-gcs does not enforce the range
])
def test_spoofed_or_wrong_files_are_rejected_and_removed(
        uploads: Uploads, declared: dict[str, Any], data: bytes, reason: str) -> None:
    user_id, auth = uploads.user()
    issued = uploads.issue(auth, filename="cat.png", **({"size": len(data)} | declared)).json
    assert uploads.put(issued, data).status_code == 200
    done = uploads.pump(auth, issued["id"])
    assert (done["status"], done["reason"]) == ("rejected", reason), done
    assert done["detail"] and "download" not in done
    assert uploads.stored(user_id) == []
    (usage,) = uploads.identity.sql("SELECT reserved_bytes, used_bytes FROM upload_usage "
                                    "WHERE user_id = :u", u=user_id)
    assert usage == (0, 0)


def test_upload_after_the_url_expired_is_rejected(uploads: Uploads) -> None:
    user_id, auth = uploads.user()
    issued = uploads.issue(auth).json
    # fake-gcs-server does not check signatures or expiry (Cloud Storage answers 400); the
    # consumer still refuses an object that arrived after its URL expired.
    uploads.identity.sql("UPDATE uploads SET url_expires_at = now() - interval '1 hour' "
                         "WHERE id = :id", id=issued["id"])
    uploads.put(issued, PNG)
    done = uploads.pump(auth, issued["id"])
    assert (done["status"], done["reason"]) == ("rejected", "url_expired")
    assert uploads.stored(user_id) == []


def test_finalize_is_idempotent_and_removes_objects_without_records(uploads: Uploads) -> None:
    from shared.upload_finalize import ObjectEvent, finalize

    user_id, auth = uploads.user()
    issued = uploads.issue(auth).json
    quarantine = f"quarantine/{user_id}/{issued['id']}"
    # Out of order: a notification for an object that is not there changes nothing.
    assert finalize(ObjectEvent("OBJECT_FINALIZE", BUCKET, quarantine, 1)) == "object_gone"
    uploads.put(issued, PNG)
    assert uploads.pump(auth, issued["id"])["status"] == "accepted"
    # Redelivery after acceptance, and a second PUT to the used URL: nothing more is kept.
    assert finalize(ObjectEvent("OBJECT_FINALIZE", BUCKET, quarantine, 1)) == "already_accepted"
    uploads.put(issued, MZ)
    assert finalize(ObjectEvent("OBJECT_FINALIZE", BUCKET, quarantine, 2)) == "already_accepted"
    assert uploads.stored(user_id) == [f"users/{user_id}/avatar/{issued['id']}.png"]
    (usage,) = uploads.identity.sql("SELECT used_bytes FROM upload_usage WHERE user_id = :u",
                                    u=user_id)
    assert usage == (len(PNG),)
    # Copies out of quarantine notify too and are ignored.
    final = f"users/{user_id}/avatar/{issued['id']}.png"
    assert finalize(ObjectEvent("OBJECT_FINALIZE", BUCKET, final, 1)) == "ignored"
    # An object nobody asked for is removed.
    stray = f"quarantine/{user_id}/{uuid.uuid4()}"
    uploads.bucket.blob(stray).upload_from_string(b"junk", content_type="image/png")
    assert finalize(ObjectEvent("OBJECT_FINALIZE", BUCKET, stray, None)) == "orphan_removed"
    assert uploads.bucket.get_blob(stray) is None


def test_a_commit_lost_after_the_copy_converges_on_accepted(uploads: Uploads) -> None:
    from shared.upload_finalize import ObjectEvent, finalize

    user_id, auth = uploads.user()
    issued = uploads.issue(auth).json
    uploads.put(issued, PNG)
    # Simulate a delivery that copied the object out and deleted it, then died before commit.
    quarantine = uploads.bucket.get_blob(f"quarantine/{user_id}/{issued['id']}")
    final = f"users/{user_id}/avatar/{issued['id']}.png"
    uploads.bucket.copy_blob(quarantine, uploads.bucket, final)
    quarantine.delete()
    assert finalize(ObjectEvent("OBJECT_FINALIZE", BUCKET, quarantine.name, 1)) == "accepted"
    assert uploads.status(auth, issued["id"])["status"] == "accepted"


def test_direct_multipart_upload_streams_and_is_finalized(uploads: Uploads) -> None:
    user_id, auth = uploads.user()
    big = cards.placeholder_image(400)  # several 256 KiB chunks once padded
    big += b"\x00" * (700 * 1024 - len(big))
    resp = uploads.app.post("/uploads/direct", headers=auth, content_type="multipart/form-data",
                            data={"purpose": "attachment", "size": str(len(big)),
                                  "file": (io.BytesIO(big), "photo.png", "image/png")})
    assert resp.status_code == 201, resp.json
    assert resp.json["filename"] == "photo.png"
    done = uploads.pump(auth, resp.json["id"])
    assert done["status"] == "accepted", done
    assert requests.get(done["download"]["url"], timeout=30).content == big

    # A file longer or shorter than declared is refused and nothing is stored.
    for size in (len(PNG) - 1, len(PNG) + 1):
        resp = uploads.app.post("/uploads/direct", headers=auth,
                                content_type="multipart/form-data",
                                data={"purpose": "avatar", "size": str(size),
                                      "file": (io.BytesIO(PNG), "a.png", "image/png")})
        assert (resp.status_code, resp.json["code"]) == (422, "size_mismatch")
    assert uploads.stored(user_id) == [f"users/{user_id}/attachment/{done['id']}.png"]
    rejected = uploads.identity.sql("SELECT reason FROM uploads WHERE owner_id = :u AND "
                                    "status = 'rejected'", u=user_id)
    assert rejected == [("size_mismatch",), ("size_mismatch",)]
    for data, content_type, code in (
        ({"purpose": "avatar", "file": (io.BytesIO(PNG), "a.png", "image/png")},
         "multipart/form-data", "validation_failed"),  # no size
        ({"purpose": "avatar", "size": "3"}, "multipart/form-data", "invalid_multipart"),
    ):
        resp = uploads.app.post("/uploads/direct", headers=auth, content_type=content_type,
                                data=data)
        assert resp.json["code"] == code, resp.json
    resp = uploads.app.post("/uploads/direct", headers=auth, json={"purpose": "avatar"})
    assert resp.status_code == 415


def test_quota_counts_pending_and_accepted_bytes(uploads: Uploads,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import clients

    monkeypatch.setenv("UPLOAD_QUOTA_BYTES", str(len(PNG) * 2 + 10))
    clients.reset()
    _, auth = uploads.user()
    first = uploads.issue(auth).json
    uploads.put(first, PNG)
    assert uploads.pump(auth, first["id"])["status"] == "accepted"
    assert uploads.issue(auth).status_code == 201  # pending: reserved
    third = uploads.issue(auth)
    assert (third.status_code, third.json["code"]) == (413, "quota_exceeded")


def test_cleanup_removes_stale_pending_uploads_and_deleted_users_objects(
        uploads: Uploads) -> None:
    from datetime import timedelta

    from shared.upload_finalize import cleanup

    user_id, auth = uploads.user()
    stale = uploads.issue(auth).json
    uploads.put(stale, PNG[:10])  # an object that never got a notification decided
    uploads.identity.sql("UPDATE uploads SET url_expires_at = now() - interval '2 hours' "
                         "WHERE id = :id", id=stale["id"])
    fresh = uploads.issue(auth).json
    result = cleanup(grace=timedelta(minutes=30))
    assert result.stale_pending >= 1
    assert (uploads.status(auth, stale["id"])["reason"]) == "expired"
    assert uploads.status(auth, fresh["id"])["status"] == "pending"
    assert uploads.stored(user_id) == []

    # A deleted user's objects go, whatever state they are in.
    gone_id, gone = uploads.user()
    accepted = uploads.issue(gone).json
    uploads.put(accepted, PNG)
    assert uploads.pump(gone, accepted["id"])["status"] == "accepted"
    assert uploads.stored(gone_id)
    uploads.identity.sql("INSERT INTO cleanup_jobs (user_id, kind) VALUES (:u, 'uploads')",
                         u=gone_id)
    result = cleanup()
    assert result.deleted_users == 1 and result.objects_removed >= 1
    assert uploads.stored(gone_id) == []
    assert uploads.identity.sql("SELECT id FROM uploads WHERE owner_id = :u", u=gone_id) == []
    assert cleanup().deleted_users == 0  # a rerun finds nothing


def test_an_object_stored_with_another_content_type_is_rejected(uploads: Uploads) -> None:
    from shared.upload_finalize import ObjectEvent, finalize

    user_id, auth = uploads.user()
    issued = uploads.issue(auth).json
    name = f"quarantine/{user_id}/{issued['id']}"
    # Cloud Storage binds the type to the signature; a direct write could still differ.
    uploads.bucket.blob(name).upload_from_string(PNG, content_type="text/html")
    assert finalize(ObjectEvent("OBJECT_FINALIZE", BUCKET, name, None)) == "rejected"
    done = uploads.status(auth, issued["id"])
    assert (done["status"], done["reason"]) == ("rejected", "content_type_mismatch")
    assert uploads.stored(user_id) == []


def test_the_newest_avatar_wins_when_notifications_arrive_out_of_order(
        uploads: Uploads) -> None:
    from shared.upload_finalize import ObjectEvent, finalize

    user_id, auth = uploads.user()
    older = uploads.issue(auth).json
    newer = uploads.issue(auth).json
    for issued in (older, newer):
        uploads.bucket.blob(f"quarantine/{user_id}/{issued['id']}").upload_from_string(
            PNG, content_type="image/png")
    for issued in (newer, older):  # the newer request's object is checked first
        name = f"quarantine/{user_id}/{issued['id']}"
        assert finalize(ObjectEvent("OBJECT_FINALIZE", BUCKET, name, None)) == "accepted"
    me = uploads.identity.users.get("/me", headers=auth).json
    assert me["avatar_upload_id"] == newer["id"]


def test_deleting_uploads_frees_quota_and_removes_objects_and_avatars(uploads: Uploads) -> None:
    user_id, auth = uploads.user()
    accepted = uploads.issue(auth).json
    uploads.put(accepted, PNG)
    assert uploads.pump(auth, accepted["id"])["status"] == "accepted"
    pending = uploads.issue(auth).json
    _, other = uploads.user()
    assert uploads.app.delete(f"/uploads/{accepted['id']}", headers=other).status_code == 404
    for issued in (accepted, pending):
        assert uploads.app.delete(f"/uploads/{issued['id']}", headers=auth).status_code == 204
    assert uploads.app.get(f"/uploads/{accepted['id']}", headers=auth).status_code == 404
    cancelled = uploads.status(auth, pending["id"])
    assert (cancelled["status"], cancelled["reason"]) == ("rejected", "cancelled")
    assert uploads.identity.users.get("/me", headers=auth).json["avatar_upload_id"] is None
    (usage,) = uploads.identity.sql("SELECT reserved_bytes, used_bytes, uploaded_bytes_total "
                                    "FROM upload_usage WHERE user_id = :u", u=user_id)
    assert usage == (0, 0, len(PNG))  # the lifetime total (business metric) stays
    # A PUT to the cancelled upload's URL is deleted on arrival.
    uploads.put(pending, PNG)
    from shared.upload_finalize import ObjectEvent, finalize

    name = f"quarantine/{user_id}/{pending['id']}"
    assert finalize(ObjectEvent("OBJECT_FINALIZE", BUCKET, name, None)) == "already_rejected"
    assert uploads.stored(user_id) == []
