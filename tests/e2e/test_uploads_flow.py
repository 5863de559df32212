"""Uploads on the whole local stack, over HTTP through the gateway: signed URL → PUT to
fake-gcs-server → bucket notification → push bridge → `upload_finalize` → accepted → signed
GET of the same bytes; every bad input refused or rejected with nothing left in the bucket;
the daily maintenance removes stale pending uploads."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[attr-defined]

from shared import cards

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PNG = cards.placeholder_image(120)
MZ = b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 300  # a Windows executable, named .png
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 300


def _url(stack: dict[str, Any], function: str, path: str) -> str:
    return f"{stack['gateway_url']}/{function}{path}"


@pytest.fixture(scope="module")
def bucket(stack: dict[str, Any]) -> Any:
    client = storage.Client(project=stack["project"],
                            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                            client_options={"api_endpoint": stack["storage_emulator_host"]})
    return client.bucket("uploads")


@pytest.fixture(scope="module")
def database(stack: dict[str, Any]) -> Iterator[sqlalchemy.Engine]:
    engine = sqlalchemy.create_engine(stack["database_url"])
    yield engine
    engine.dispose()


def _user(stack: dict[str, Any]) -> tuple[str, dict[str, str]]:
    signup = requests.post(_url(stack, "auth", "/signup"), timeout=10, json={
        "email": f"up-{uuid.uuid4().hex[:8]}@example.com",
        "password": "a long and unusual passphrase", "display_name": "Uploader"})
    assert signup.status_code == 201, signup.text
    return signup.json()["user_id"], {"Authorization": f"Bearer {signup.json()['access_token']}"}


def _issue(stack: dict[str, Any], auth: dict[str, str], **body: Any) -> requests.Response:
    body = {"purpose": "avatar", "content_type": "image/png", "size": len(PNG)} | body
    return requests.post(_url(stack, "upload", "/uploads"), json=body, headers=auth, timeout=10)


def _put(issued: dict[str, Any], data: bytes) -> None:
    upload = issued["upload"]
    put = requests.put(upload["url"], data=data, headers=upload["headers"], timeout=30)
    assert put.status_code == 200, put.text


def _decided(stack: dict[str, Any], auth: dict[str, str], upload_id: str,
             timeout: float = 60) -> dict[str, Any]:
    """Poll the status until the finalize consumer has decided."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = requests.get(_url(stack, "upload", f"/uploads/{upload_id}"), headers=auth,
                            timeout=10)
        assert resp.status_code == 200, resp.text
        if resp.json()["status"] != "pending":
            return dict(resp.json())
        time.sleep(0.1)
    pytest.fail(f"upload {upload_id} is still pending")


def _stored(bucket: Any, user_id: str) -> list[str]:
    return [b.name for prefix in (f"quarantine/{user_id}/", f"users/{user_id}/")
            for b in bucket.list_blobs(prefix=prefix)]


def test_signed_url_upload_is_accepted_and_the_signed_get_returns_the_same_bytes(
        stack: dict[str, Any], bucket: Any) -> None:
    user_id, auth = _user(stack)
    resp = _issue(stack, auth, filename="me.png")
    assert resp.status_code == 201, resp.text
    issued = resp.json()
    assert issued["upload"]["url"].startswith(
        f"{stack['storage_emulator_host']}/uploads/quarantine/{user_id}/{issued['id']}?")
    _put(issued, PNG)
    done = _decided(stack, auth, issued["id"])
    assert done["status"] == "accepted" and done["size"] == len(PNG), done
    download = requests.get(done["download"]["url"], timeout=30)
    assert download.status_code == 200 and download.content == PNG
    assert _stored(bucket, user_id) == [f"users/{user_id}/avatar/{issued['id']}.png"]
    me = requests.get(_url(stack, "users", "/me"), headers=auth, timeout=10).json()
    assert me["avatar_upload_id"] == issued["id"]


def test_direct_multipart_upload_takes_the_same_path(stack: dict[str, Any], bucket: Any
                                                     ) -> None:
    user_id, auth = _user(stack)
    resp = requests.post(_url(stack, "upload", "/uploads/direct"), headers=auth, timeout=30,
                         data={"purpose": "attachment", "size": str(len(PNG))},
                         files={"file": ("notes.png", PNG, "image/png")})
    assert resp.status_code == 201, resp.text
    done = _decided(stack, auth, resp.json()["id"])
    assert done["status"] == "accepted", done
    assert requests.get(done["download"]["url"], timeout=30).content == PNG
    assert _stored(bucket, user_id) == [f"users/{user_id}/attachment/{done['id']}.png"]


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"content_type": "application/x-msdownload"}, 422, "unsupported_type"),  # wrong type
    ({"size": 50 * 1024 * 1024}, 413, "file_too_large"),  # oversized
    ({"size": 0}, 422, "empty_file"),  # zero bytes
    ({"filename": "../../x"}, 422, "invalid_filename"),  # path-like file name
])
def test_bad_requests_are_refused_with_a_reason(stack: dict[str, Any], bucket: Any,
                                                body: dict[str, Any], status: int, code: str
                                                ) -> None:
    user_id, auth = _user(stack)
    resp = _issue(stack, auth, **body)
    assert (resp.status_code, resp.json()["code"]) == (status, code), resp.text
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert _stored(bucket, user_id) == []


def test_uploads_for_someone_elses_character_are_refused(stack: dict[str, Any]) -> None:
    _, owner = _user(stack)
    _, intruder = _user(stack)
    character = requests.post(_url(stack, "characters", "/characters"), headers=owner, timeout=10,
                              json={"name": "Theirs", "visibility": "public"}).json()
    resp = _issue(stack, intruder, purpose="character_avatar", character_id=character["id"])
    assert (resp.status_code, resp.json()["code"]) == (403, "not_owner")


@pytest.mark.parametrize(("declared", "data", "reason"), [
    ({}, MZ, "type_mismatch"),  # spoofed: a Windows executable declared image/png
    ({}, ELF, "type_mismatch"),  # spoofed: a Linux executable declared image/png
    ({"content_type": "image/gif"}, PNG, "type_mismatch"),  # wrong declared type
    ({"size": len(PNG) + 1}, PNG, "size_mismatch"),
])
def test_spoofed_files_are_rejected_and_deleted(stack: dict[str, Any], bucket: Any,
                                                declared: dict[str, Any], data: bytes,
                                                reason: str) -> None:
    user_id, auth = _user(stack)
    issued = _issue(stack, auth, filename="cute-cat.png", **({"size": len(data)} | declared))
    assert issued.status_code == 201, issued.text
    _put(issued.json(), data)
    done = _decided(stack, auth, issued.json()["id"])
    assert (done["status"], done["reason"]) == ("rejected", reason), done
    assert _stored(bucket, user_id) == []


def test_an_upload_after_the_url_expired_is_rejected(stack: dict[str, Any], bucket: Any,
                                                     database: sqlalchemy.Engine) -> None:
    user_id, auth = _user(stack)
    issued = _issue(stack, auth).json()
    # fake-gcs-server accepts expired signatures (Cloud Storage answers 400 itself); the
    # consumer still refuses what arrives after the URL's expiry.
    with database.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE uploads SET url_expires_at = now() - "
                                     "interval '1 hour' WHERE id = :id"), {"id": issued["id"]})
    _put(issued, PNG)
    done = _decided(stack, auth, issued["id"])
    assert (done["status"], done["reason"]) == ("rejected", "url_expired")
    assert _stored(bucket, user_id) == []


def test_daily_maintenance_removes_stale_pending_uploads(stack: dict[str, Any], bucket: Any,
                                                         database: sqlalchemy.Engine) -> None:
    user_id, auth = _user(stack)
    stale = _issue(stack, auth).json()
    with database.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE uploads SET url_expires_at = now() - "
                                     "interval '2 hours' WHERE id = :id"), {"id": stale["id"]})
    fresh = _issue(stack, auth).json()
    subprocess.run([sys.executable, "-m", "emulators", "fire", "maintenance-daily", "--run-dir",
                    stack["run_dir"]], cwd=REPO, capture_output=True, text=True, timeout=60,
                   check=True)
    done = _decided(stack, auth, stale["id"])
    assert (done["status"], done["reason"]) == ("rejected", "expired")
    fresh_status = requests.get(_url(stack, "upload", f"/uploads/{fresh['id']}"), headers=auth,
                                timeout=10).json()
    assert fresh_status["status"] == "pending"
    assert _stored(bucket, user_id) == []
