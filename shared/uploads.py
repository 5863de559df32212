"""Uploads: records, quota, signed URLs, direct uploads, and who may see what.

An upload starts `pending` with a server-chosen object name under the quarantine prefix
(`quarantine/<owner>/<id>`; the client's file name is display metadata only). The client PUTs to
a short-lived V4 signed URL bound to the declared content type, the exact size
(`x-goog-content-length-range`) and `x-goog-if-generation-match: 0`, or sends small files through
the function (`direct_upload`). The bucket's finalize notification then reaches
`upload_finalize` (`shared.upload_finalize`), which accepts the object into
`users/<owner>/<purpose>/<id>.<ext>` or rejects it.

Quota: each user's accepted and pending bytes stay within `UPLOAD_QUOTA_BYTES`; a pending upload
reserves its declared size by one atomic statement, and finalizing moves it to used (or frees it).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

from shared import errors, upload_rules
from shared.config import get_settings

if TYPE_CHECKING:
    from google.cloud.storage import Bucket  # type: ignore[attr-defined]
    from sqlalchemy.engine import Connection

log = logging.getLogger("shared.uploads")

QUARANTINE_PREFIX = "quarantine/"  # the manifest's Bucket.quarantine_prefix (a test pins it)
FINAL_PREFIX = "users/"
DOWNLOAD_TTL = timedelta(minutes=5)
# The chunk the direct path streams in: memory per upload stays at about this much.
STREAM_CHUNK = 256 * 1024
_COLUMNS = ("id, owner_id, purpose, content_type, declared_size, filename, character_id, via, "
            "object_name, final_name, status, reason, detail, size, url_expires_at, created_at, "
            "finalized_at")


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


@dataclass(frozen=True)
class Record:
    id: str
    owner_id: str
    purpose: str
    content_type: str
    declared_size: int
    filename: str | None
    character_id: str | None
    via: str
    object_name: str
    final_name: str
    status: str
    reason: str | None
    detail: str | None
    size: int | None
    url_expires_at: datetime
    created_at: datetime
    finalized_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> Record:
        values = list(row)
        for i in (0, 1, 6):
            values[i] = str(values[i]) if values[i] is not None else None
        return cls(*values)


def bucket() -> Bucket:
    from shared.clients import storage_client

    return storage_client().bucket(get_settings().uploads_bucket)


def object_names(owner: str, upload_id: str, purpose: str, content_type: str
                 ) -> tuple[str, str]:
    """(quarantine name, final name): both chosen here, never from what the client sent."""
    extension = upload_rules.EXTENSIONS[content_type]
    return (f"{QUARANTINE_PREFIX}{owner}/{upload_id}",
            f"{FINAL_PREFIX}{owner}/{purpose}/{upload_id}.{extension}")


def load(conn: Connection, upload_id: str, *, lock: bool = False) -> Record | None:
    suffix = " FOR UPDATE" if lock else ""
    row = conn.execute(_sql(f"SELECT {_COLUMNS} FROM uploads WHERE id = :id{suffix}"),
                       {"id": upload_id}).first()
    return Record.of(row) if row is not None else None


def load_by_object(conn: Connection, object_name: str, *, lock: bool = False) -> Record | None:
    suffix = " FOR UPDATE" if lock else ""
    row = conn.execute(_sql(f"SELECT {_COLUMNS} FROM uploads WHERE object_name = :n{suffix}"),
                       {"n": object_name}).first()
    return Record.of(row) if row is not None else None


def reserve(conn: Connection, owner: str, size: int, quota: int) -> None:
    """Reserve `size` bytes of `owner`'s quota in one atomic statement, or 413."""
    if size <= quota:
        conn.execute(_sql("INSERT INTO upload_usage (user_id) VALUES (:u) "
                          "ON CONFLICT (user_id) DO NOTHING"), {"u": owner})
        reserved = conn.execute(_sql(
            "UPDATE upload_usage SET reserved_bytes = reserved_bytes + :size, updated_at = now() "
            "WHERE user_id = :u AND used_bytes + reserved_bytes + :size <= :quota RETURNING 1"),
            {"u": owner, "size": size, "quota": quota}).first()
        if reserved is not None:
            return
    raise errors.PayloadTooLarge(f"this upload would exceed your storage quota of {quota} bytes",
                                 code="quota_exceeded")


def release(conn: Connection, owner: str, declared: int, accepted_size: int | None) -> None:
    """Free a pending upload's reservation; when accepted, count its bytes as used and in the
    user's lifetime total (the upload-bytes business metric)."""
    conn.execute(_sql(
        "UPDATE upload_usage SET reserved_bytes = GREATEST(reserved_bytes - :declared, 0), "
        "used_bytes = used_bytes + :size, uploaded_bytes_total = uploaded_bytes_total + :size, "
        "updated_at = now() WHERE user_id = :u"),
        {"u": owner, "declared": declared, "size": accepted_size or 0})


def usage(conn: Connection, owner: str) -> dict[str, int]:
    row = conn.execute(_sql("SELECT reserved_bytes, used_bytes, uploaded_bytes_total "
                            "FROM upload_usage WHERE user_id = :u"), {"u": owner}).first()
    reserved, used, total = row if row is not None else (0, 0, 0)
    return {"reserved_bytes": reserved, "used_bytes": used, "uploaded_bytes_total": total,
            "quota_bytes": get_settings().upload_quota_bytes}


def create(conn: Connection, owner: str, fields: dict[str, Any], via: str) -> Record:
    """Check a request against the purpose's rules, the character's ownership and the quota,
    and write its pending record. The caller commits before the client may upload, so the
    finalize notification always finds the record."""
    from shared.characters import require_owner

    purpose, content_type, size = fields["purpose"], fields["content_type"], fields["size"]
    upload_rules.check_request(purpose, content_type, size)
    if via == "direct" and size > upload_rules.DIRECT_MAX_BYTES:
        raise errors.PayloadTooLarge(
            f"direct uploads are at most {upload_rules.DIRECT_MAX_BYTES} bytes; "
            "use POST /uploads and the signed URL", code="file_too_large")
    filename = upload_rules.clean_filename(fields.get("filename"))
    character_id = fields.get("character_id")
    if purpose == "character_avatar":
        if not character_id:
            raise errors.ValidationFailed("character_avatar uploads name their character",
                                          code="character_required", errors=[
                {"field": "character_id", "message": "is required for character_avatar"}])
        from shared.validation import uuid_field

        character_id = uuid_field(character_id, "character_id")
        require_owner(conn, owner, character_id)
    elif character_id is not None:
        raise errors.ValidationFailed("only character_avatar uploads name a character",
                                      code="unexpected_character", errors=[
            {"field": "character_id", "message": "is only allowed for character_avatar"}])
    settings = get_settings()
    reserve(conn, owner, size, settings.upload_quota_bytes)
    upload_id = str(uuid.uuid4())
    quarantine, final = object_names(owner, upload_id, purpose, content_type)
    row = conn.execute(_sql(
        "INSERT INTO uploads (id, owner_id, purpose, content_type, declared_size, filename, "
        "character_id, via, object_name, final_name, url_expires_at) VALUES (:id, :owner, "
        ":purpose, :ct, :size, :filename, :character, :via, :object, :final, "
        f"now() + make_interval(secs => :ttl)) RETURNING {_COLUMNS}"),
        {"id": upload_id, "owner": owner, "purpose": purpose, "ct": content_type, "size": size,
         "filename": filename, "character": character_id, "via": via, "object": quarantine,
         "final": final, "ttl": settings.upload_url_ttl_s}).one()
    return Record.of(row)


def upload_headers(record: Record) -> dict[str, str]:
    """The headers a PUT to the signed URL must carry (they are part of the signature)."""
    return {"Content-Type": record.content_type,
            "x-goog-content-length-range": f"{record.declared_size},{record.declared_size}",
            "x-goog-if-generation-match": "0"}


def issue(conn: Connection, owner: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A pending upload and the signed PUT URL the client sends the file to."""
    from shared import storage_signing

    record = create(conn, owner, fields, "signed_url")
    headers = upload_headers(record)
    ttl = timedelta(seconds=get_settings().upload_url_ttl_s)
    url = storage_signing.signed_url(
        bucket().blob(record.object_name), "PUT", ttl, content_type=record.content_type,
        headers={k: v for k, v in headers.items() if k != "Content-Type"})
    return view(record) | {"upload": {"method": "PUT", "url": url, "headers": headers,
                                      "expires_at": record.url_expires_at.isoformat()}}


def reject(conn: Connection, record: Record, reason: str, detail: str) -> bool:
    """Mark a pending upload rejected and free its reservation; False when already decided."""
    done = conn.execute(_sql(
        "UPDATE uploads SET status = 'rejected', reason = :reason, detail = :detail, "
        "finalized_at = now() WHERE id = :id AND status = 'pending' RETURNING 1"),
        {"id": record.id, "reason": reason, "detail": detail}).first()
    if done is None:
        return False
    release(conn, record.owner_id, record.declared_size, None)
    log.info("upload %s rejected: %s", record.id, reason,
             extra={"uploadId": record.id, "reason": reason})
    return True


class _SizedStream:
    """A file-like view of the multipart file part that refuses more or fewer bytes than
    declared, so nothing larger than the record says is ever written."""

    def __init__(self, chunks: Any, declared: int) -> None:
        self._chunks = chunks
        self._buffer = b""
        self.declared = declared
        self.seen = 0

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                # The end: checked before the last piece goes out, so a short file never
                # becomes an object.
                if self.seen != self.declared:
                    raise errors.ValidationFailed(
                        f"the file has {self.seen} bytes but {self.declared} were declared",
                        code="size_mismatch")
                break
            self.seen += len(chunk)
            if self.seen > self.declared:
                raise errors.ValidationFailed(
                    f"the file has more than the declared {self.declared} bytes",
                    code="size_mismatch")
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def tell(self) -> int:
        return self.seen - len(self._buffer)


def direct_upload(owner: str, fields: dict[str, Any], chunks: Any) -> Record:
    """Write the record, then stream the file part (`chunks`, an iterator of bytes) to the
    quarantine object in `STREAM_CHUNK` pieces; the same finalize flow takes it from there.
    On any failure nothing is left in the bucket and the record is rejected."""
    from shared import db

    with db.transaction() as conn:
        record = create(conn, owner, fields, "direct")
    blob = bucket().blob(record.object_name)
    blob.chunk_size = STREAM_CHUNK  # resumable, chunk by chunk: never the whole file in memory
    stream: IO[bytes] = _SizedStream(chunks, record.declared_size)  # type: ignore[assignment]
    try:
        # size=None: a resumable upload fed chunk by chunk (a known size up to 8 MiB would
        # make the client read the whole stream for a one-shot multipart upload).
        blob.upload_from_file(stream, size=None, content_type=record.content_type,
                              if_generation_match=0, retry=None)
    except Exception as exc:
        reason, detail = ("size_mismatch", exc.detail) if isinstance(
            exc, errors.ValidationFailed) else ("upload_failed", "the upload did not complete")
        with db.transaction() as conn:
            reject(conn, record, reason, detail)
        raise
    return record


def view(record: Record) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": record.id, "purpose": record.purpose, "status": record.status,
        "content_type": record.content_type, "size": record.size or record.declared_size,
        "filename": record.filename, "character_id": record.character_id,
        "created_at": record.created_at.isoformat(), "reason": record.reason,
        "detail": record.detail}
    return out


def _may_see(conn: Connection, viewer: str, record: Record) -> bool:
    if record.owner_id == viewer:
        return True
    if record.status != "accepted":
        return False
    if record.purpose == "avatar":  # profile pictures are shown to other users
        row = conn.execute(_sql("SELECT 1 FROM users WHERE id = :u AND avatar_upload_id = :id"),
                           {"u": record.owner_id, "id": record.id}).first()
        return row is not None
    if record.purpose == "character_avatar":
        row = conn.execute(_sql(
            "SELECT 1 FROM characters WHERE id = :c AND avatar_upload_id = :id "
            "AND deleted_at IS NULL AND visibility IN ('public', 'unlisted')"),
            {"c": record.character_id, "id": record.id}).first()
        return row is not None
    return False  # attachments: their owner only


def status(conn: Connection, viewer: str, upload_id: str) -> dict[str, Any]:
    """The upload's status; when accepted, a short-lived signed GET URL (404 for uploads the
    viewer may not see: no hint that they exist)."""
    from shared import storage_signing

    record = load(conn, upload_id)
    if record is None or not _may_see(conn, viewer, record):
        raise errors.NotFound("no such upload", code="upload_not_found")
    out = view(record)
    if record.status == "accepted":
        inline = record.content_type in upload_rules.IMAGES
        extension = upload_rules.EXTENSIONS[record.content_type]
        disposition = ("inline" if inline else "attachment") + \
            f'; filename="{record.id}.{extension}"'
        out["download"] = {
            "method": "GET",
            "url": storage_signing.signed_url(bucket().blob(record.final_name), "GET",
                                              DOWNLOAD_TTL, response_disposition=disposition),
            "expires_in_s": int(DOWNLOAD_TTL.total_seconds())}
    return out


def require_accepted(conn: Connection, owner: str, upload_id: str, purpose: str,
                     field: str = "avatar_upload_id") -> None:
    """422 unless `upload_id` is an accepted upload of `owner` made for `purpose`."""
    row = conn.execute(_sql("SELECT 1 FROM uploads WHERE id = :id AND owner_id = :owner "
                            "AND purpose = :purpose AND status = 'accepted'"),
                       {"id": upload_id, "owner": owner, "purpose": purpose}).first()
    if row is None:
        raise errors.ValidationFailed(
            f"{field} must be one of your accepted {purpose} uploads", code="invalid_upload",
            errors=[{"field": field, "message": f"must be an accepted {purpose} upload of yours"}])


def delete(conn: Connection, owner: str, upload_id: str) -> None:
    """Remove one of the owner's uploads and its object, freeing its quota bytes; an avatar
    it was is removed too. A pending upload is cancelled (rejected `cancelled`) instead, so a
    late notification finds it decided. 404 for uploads of others."""
    from google.api_core import exceptions

    record = load(conn, upload_id, lock=True)
    if record is None or record.owner_id != owner:
        raise errors.NotFound("no such upload", code="upload_not_found")
    if record.status == "pending":
        reject(conn, record, "cancelled", "the owner cancelled the upload")
        name = record.object_name
    else:
        name = record.final_name if record.status == "accepted" else record.object_name
        if record.status == "accepted":
            conn.execute(_sql(
                "UPDATE upload_usage SET used_bytes = GREATEST(used_bytes - :size, 0), "
                "updated_at = now() WHERE user_id = :u"), {"u": owner, "size": record.size or 0})
            for table in ("users", "characters"):
                conn.execute(_sql(f"UPDATE {table} SET avatar_upload_id = NULL "
                                  "WHERE avatar_upload_id = :id"), {"id": record.id})
        conn.execute(_sql("DELETE FROM uploads WHERE id = :id"), {"id": record.id})
    try:
        bucket().blob(name).delete()
    except exceptions.NotFound:
        pass
