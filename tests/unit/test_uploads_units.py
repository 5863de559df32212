"""Upload rules, magic-byte sniffing, file names, streaming multipart, the signer choice and
notification parsing: pure logic, no services."""

from __future__ import annotations

import io
from typing import Any

import pytest

from infra.topology import TOPOLOGY
from shared import cards, errors, storage_signing, upload_rules, uploads
from shared.config import ConfigError, get_settings, load_settings
from shared.multipart_stream import read_file_part
from shared.upload_finalize import ObjectEvent

PNG = cards.placeholder_image(8)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 20
GIF = b"GIF89a" + b"\x00" * 20
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 20
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
MZ = b"MZ\x90\x00" + b"\x00" * 60
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56
MACHO = b"\xcf\xfa\xed\xfe" + b"\x00" * 20
SCRIPT = b"#!/bin/sh\nrm -rf /\n"
MAX = 5 * 1024 * 1024


@pytest.mark.parametrize(("head", "kind"), [
    (PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp"),
    (PDF, "application/pdf"), (MZ, "application/x-msdownload"), (ELF, "application/x-elf"),
    (MACHO, "application/x-mach-binary"), (SCRIPT, "text/x-shellscript"),
    (b"PK\x03\x04rest", "application/zip"), (b"hello", None), (b"", None),
    (b"RIFF\x00\x00\x00\x00WAVE", None),  # RIFF, but not WebP
])
def test_sniff_recognizes_signatures(head: bytes, kind: str | None) -> None:
    assert upload_rules.sniff(head) == kind


@pytest.mark.parametrize(("declared", "head"), [
    ("image/png", PNG), ("image/jpeg", JPEG), ("image/gif", GIF), ("image/webp", WEBP),
    ("application/pdf", PDF), ("text/plain", b"hello\tworld\r\n"),
    ("text/plain", "안녕하세요".encode()),
    ("text/plain", "가".encode()[:2]),  # a character cut by the sample's end
])
def test_matching_content_is_accepted(declared: str, head: bytes) -> None:
    size = len(head)
    assert upload_rules.check_content(declared, head, size, size, MAX) is None


@pytest.mark.parametrize(("declared", "head", "reason", "words"), [
    ("image/png", MZ, "type_mismatch", "executable"),
    ("image/png", ELF, "type_mismatch", "executable"),
    ("image/gif", MACHO, "type_mismatch", "executable"),
    ("text/plain", SCRIPT, "type_mismatch", "executable"),
    ("image/png", JPEG, "type_mismatch", "image/jpeg"),
    ("image/jpeg", b"not an image at all", "type_mismatch", "unknown"),
    ("text/plain", b"abc\x00def", "type_mismatch", "binary"),
    ("text/plain", PNG, "type_mismatch", "image/png"),
    ("text/plain", b"\xff\xfe bad utf-8 in the middle", "type_mismatch", "binary"),
])
def test_spoofed_or_wrong_content_is_refused(declared: str, head: bytes, reason: str,
                                             words: str) -> None:
    verdict = upload_rules.check_content(declared, head, len(head), len(head), MAX)
    assert verdict is not None and verdict.reason == reason and words in verdict.detail


def test_size_checks_come_first() -> None:
    assert upload_rules.check_content("image/png", b"", 0, 10, MAX).reason == "empty"  # type: ignore[union-attr]
    assert upload_rules.check_content("image/png", PNG, MAX + 1, MAX + 1, MAX
                                      ).reason == "too_large"  # type: ignore[union-attr]
    assert upload_rules.check_content("image/png", PNG, 11, 10, MAX
                                      ).reason == "size_mismatch"  # type: ignore[union-attr]


@pytest.mark.parametrize(("purpose", "content_type", "size", "error", "code"), [
    ("avatar", "image/png", 1, None, None),
    ("attachment", "application/pdf", 20 * 1024 * 1024, None, None),
    ("attachment", "text/plain", 10, None, None),
    ("avatar", "application/pdf", 10, errors.ValidationFailed, "unsupported_type"),
    ("avatar", "IMAGE/PNG", 10, errors.ValidationFailed, "unsupported_type"),
    ("avatar", "image/png; charset=x", 10, errors.ValidationFailed, "unsupported_type"),
    ("avatar", "image/svg+xml", 10, errors.ValidationFailed, "unsupported_type"),
    ("avatar", "image/png", 0, errors.ValidationFailed, "empty_file"),
    ("avatar", "image/png", MAX + 1, errors.PayloadTooLarge, "file_too_large"),
    ("attachment", "application/pdf", 20 * 1024 * 1024 + 1, errors.PayloadTooLarge,
     "file_too_large"),
    ("banner", "image/png", 10, errors.ValidationFailed, "invalid_purpose"),
])
def test_request_rules_per_purpose(purpose: str, content_type: str, size: int,
                                   error: type[errors.AppError] | None, code: str | None) -> None:
    if error is None:
        assert upload_rules.check_request(purpose, content_type, size).max_bytes >= size
        return
    with pytest.raises(error) as caught:
        upload_rules.check_request(purpose, content_type, size)
    assert caught.value.code == code


@pytest.mark.parametrize("name", ["../../x", "..", ".", "a/b.png", "a\\b.png", "/etc/passwd",
                                  "x\x00.png", "x\n.png", "", "   ", "a" * 256])
def test_path_like_or_odd_file_names_are_refused(name: str) -> None:
    with pytest.raises(errors.ValidationFailed) as caught:
        upload_rules.clean_filename(name)
    assert caught.value.code == "invalid_filename"


def test_plain_file_names_are_kept_for_display() -> None:
    assert upload_rules.clean_filename(" 내 사진.png ") == "내 사진.png"
    assert upload_rules.clean_filename("..hidden.png") == "..hidden.png"
    assert upload_rules.clean_filename(None) is None


def test_object_names_are_chosen_by_the_server() -> None:
    quarantine, final = uploads.object_names("u1", "id1", "avatar", "image/jpeg")
    assert quarantine == "quarantine/u1/id1" and final == "users/u1/avatar/id1.jpg"
    # The prefix the bucket's lifecycle rule deletes from is the one uploads land under.
    assert {b.quarantine_prefix for b in TOPOLOGY.buckets} == {uploads.QUARANTINE_PREFIX}
    assert set(upload_rules.EXTENSIONS) == set(upload_rules.ALL_TYPES)


# --- streaming multipart ------------------------------------------------------------------------


class TrickleStream(io.RawIOBase):
    """A request body that arrives a few bytes at a time, and counts what was read."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.pos = data, step, 0

    def read(self, size: int = -1) -> bytes:
        n = self.step if size < 0 else min(size, self.step)
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def _form(boundary: str, fields: dict[str, str], file: bytes, name: str = "file") -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                 f'filename="a.png"\r\nContent-Type: image/png\r\n\r\n'.encode() + file + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts)


@pytest.mark.parametrize("step", [1, 7, 64 * 1024])
def test_multipart_fields_then_the_file_streamed(step: int) -> None:
    body_file = bytes(range(256)) * 40 + b"\r\n--not-the-boundary"
    body = _form("XyZ", {"purpose": "avatar", "size": str(len(body_file))}, body_file)
    stream = TrickleStream(body, step)
    part = read_file_part(stream, "XyZ")  # type: ignore[arg-type]
    assert part.fields == {"purpose": "avatar", "size": str(len(body_file))}
    assert (part.filename, part.content_type) == ("a.png", "image/png")
    if step == 1:
        assert stream.pos < len(body)  # the file has not been read yet
    assert b"".join(part.chunks) == body_file


@pytest.mark.parametrize(("body", "boundary"), [
    (b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\navatar\r\n--XyZ--\r\n",
     "XyZ"),  # no file part
    (_form("XyZ", {}, b"abc", name="other"), "XyZ"),
    (_form("XyZ", {"a": "x" * 2000}, b"abc"), "XyZ"),
    (_form("XyZ", {}, b"abc"), ""),
    (b"garbage", "XyZ"),
])
def test_bad_multipart_bodies_are_400(body: bytes, boundary: str) -> None:
    with pytest.raises(errors.BadRequest) as caught:
        part = read_file_part(io.BytesIO(body), boundary)
        b"".join(part.chunks)
    assert caught.value.code == "invalid_multipart"


def test_a_truncated_file_part_is_400() -> None:
    body = _form("XyZ", {}, b"abcdef" * 10)[:-20]
    part = read_file_part(io.BytesIO(body), "XyZ")
    with pytest.raises(errors.BadRequest):
        b"".join(part.chunks)


@pytest.mark.parametrize(("chunks", "declared", "ok"), [
    ([b"ab", b"cd"], 4, True), ([b"ab", b"cd"], 5, False), ([b"ab", b"cde"], 4, False)])
def test_sized_stream_refuses_other_lengths(chunks: list[bytes], declared: int, ok: bool) -> None:
    stream = uploads._SizedStream(iter(chunks), declared)
    if ok:
        assert stream.read(3) + stream.read(3) + stream.read(3) == b"abcd"
        return
    with pytest.raises(errors.ValidationFailed) as caught:
        while stream.read(3):
            pass
    assert caught.value.code == "size_mismatch"


# --- signing and notifications ------------------------------------------------------------------


class FakeComputeCredentials:
    """What google.auth.default() gives on Cloud Run: no key, a token from the metadata server."""

    def __init__(self) -> None:
        self.valid = False
        self.token: str | None = None
        self.service_account_email = "default"
        self.refreshes = 0

    def refresh(self, request: Any) -> None:
        self.refreshes += 1
        self.valid, self.token = True, f"token-{self.refreshes}"
        self.service_account_email = "upload-fn@proj.iam.gserviceaccount.com"


def test_without_a_key_urls_are_signed_through_iam_sign_blob(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeComputeCredentials()
    monkeypatch.delenv("STORAGE_SIGNING_KEY", raising=False)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    get_settings.cache_clear()
    storage_signing.reset()
    monkeypatch.setattr("google.auth.default", lambda **_kw: (fake, "proj"))
    try:
        kwargs = storage_signing.signer_kwargs()
        assert kwargs == {"service_account_email": "upload-fn@proj.iam.gserviceaccount.com",
                          "access_token": "token-1"}  # google-cloud-storage's signBlob path
        storage_signing.signer_kwargs()
        assert fake.refreshes == 1  # refreshed only when expired
    finally:
        get_settings.cache_clear()
        storage_signing.reset()


def test_with_a_local_key_urls_are_signed_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from emulators.services import local_signing_key

    monkeypatch.setenv("STORAGE_SIGNING_KEY", local_signing_key("p"))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    get_settings.cache_clear()
    storage_signing.reset()
    try:
        kwargs = storage_signing.signer_kwargs()
        assert kwargs["api_access_endpoint"] == "http://127.0.0.1:1"
        signer = kwargs["credentials"].service_account_email
        assert signer == "local-signer@p.iam.gserviceaccount.com"
        assert "access_token" not in kwargs
    finally:
        get_settings.cache_clear()
        storage_signing.reset()


def test_production_refuses_a_signing_key_file() -> None:
    env = {"APP_ENV": "prod", "GOOGLE_CLOUD_PROJECT": "p", "CURSOR_SECRET": "x" * 32,
           "STORAGE_SIGNING_KEY": "{}"}
    with pytest.raises(ConfigError, match="STORAGE_SIGNING_KEY"):
        load_settings(env)
    with pytest.raises(ConfigError, match="UPLOAD_QUOTA_BYTES"):
        load_settings({"UPLOAD_QUOTA_BYTES": "-1"})


def test_object_events_from_notifications() -> None:
    event = ObjectEvent.from_message(
        {"eventType": "OBJECT_FINALIZE", "bucketId": "b", "objectId": "quarantine/u/1",
         "objectGeneration": "17"}, {"name": "ignored"})
    assert event == ObjectEvent("OBJECT_FINALIZE", "b", "quarantine/u/1", 17)
    from_data = ObjectEvent.from_message({}, {"bucket": "b", "name": "n", "generation": "x"})
    assert from_data == ObjectEvent("OBJECT_FINALIZE", "b", "n", None)
    assert ObjectEvent.from_message({}, [1, 2]).name == ""
