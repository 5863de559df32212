"""The finalize consumer's logic, and the uploads' share of the daily maintenance.

A bucket notification (`OBJECT_FINALIZE`, JSON_API_V1) names an object. Only quarantine objects
matter (copies into `users/` notify too and are ignored). The record is locked for the whole
decision, so concurrent deliveries of one object run one after the other:

- no record: the object is nobody's upload and is deleted;
- record already decided (a redelivery, or a second PUT to a used URL): any quarantine object
  left is deleted; nothing else changes;
- object gone (out of order, or an earlier delivery copied it but failed to commit): accepted
  if its final copy exists, else left for the expiry cleanup;
- otherwise the first bytes are read (a ranged download) and checked with
  `upload_rules.check_content`; accepted objects are copied to their final name, the quarantine
  object is deleted and the record is marked accepted (avatars are attached); rejected ones are
  deleted and the reason is recorded.

Storage effects happen before the commit and are each idempotent, so a retry after any failure
converges on the same result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from shared import db, upload_rules, uploads

if TYPE_CHECKING:
    from google.cloud.storage import Blob, Bucket  # type: ignore[attr-defined]
    from sqlalchemy.engine import Connection

log = logging.getLogger("shared.upload_finalize")
# A pending upload is given up this long after its URL expired (a PUT may still be in flight).
PENDING_GRACE = timedelta(minutes=30)
# Rejected records stay this long for their owners to read the reason.
REJECTED_RETENTION = timedelta(days=30)
# Storage checks a signed URL's expiry when the PUT starts; a large upload may finish later.
FINISH_GRACE = timedelta(minutes=5)


@dataclass(frozen=True)
class ObjectEvent:
    event_type: str
    bucket: str
    name: str
    generation: int | None

    @classmethod
    def from_message(cls, attributes: dict[str, str], data: Any) -> ObjectEvent:
        body = data if isinstance(data, dict) else {}
        name = attributes.get("objectId") or body.get("name") or ""
        generation = str(attributes.get("objectGeneration") or body.get("generation") or "")
        return cls(attributes.get("eventType", "OBJECT_FINALIZE"),
                   str(attributes.get("bucketId") or body.get("bucket") or ""), str(name),
                   int(generation) if generation.isascii() and generation.isdigit() else None)


def _get_blob(bucket: Bucket, name: str) -> Blob | None:
    from google.api_core import exceptions

    from shared import errors

    try:
        return bucket.get_blob(name)
    except exceptions.BadRequest:
        # Permanent: no object can have this name. 422 sends it to the dead-letter topic.
        raise errors.ValidationFailed("the notification names no valid object",
                                      code="invalid_object") from None


def _delete(blob: Blob, generation: int | None = None) -> None:
    from google.api_core import exceptions

    try:
        blob.delete(if_generation_match=generation)
    except (exceptions.NotFound, exceptions.PreconditionFailed):
        pass  # already gone, or replaced: a later notification handles the new generation


def finalize(event: ObjectEvent) -> str:
    """Decide one notified object; returns what happened (for the log). Raises to retry."""
    from shared.config import get_settings

    if event.event_type != "OBJECT_FINALIZE" or event.bucket != get_settings().uploads_bucket:
        return "ignored"
    if not event.name.startswith(uploads.QUARANTINE_PREFIX):
        return "ignored"  # our own copies out of quarantine
    bucket = uploads.bucket()
    with db.transaction() as conn:
        record = uploads.load_by_object(conn, event.name, lock=True)
        blob = _get_blob(bucket, event.name)
        if record is None:
            if blob is not None:
                _delete(blob, blob.generation)
            return "orphan_removed"
        if record.status != "pending":
            if blob is not None:
                _delete(blob, blob.generation)
            return f"already_{record.status}"
        if blob is None:
            final = bucket.get_blob(record.final_name)
            if final is None:
                return "object_gone"
            _accept(conn, record, int(final.size or 0))
            return "accepted"
        verdict = _inspect(record, blob)
        if verdict is not None:
            _delete(blob, blob.generation)
            uploads.reject(conn, record, verdict.reason, verdict.detail)
            return "rejected"
        _copy_out(bucket, blob, record)
        _delete(blob, blob.generation)
        _accept(conn, record, int(blob.size or 0))
        return "accepted"


def _inspect(record: uploads.Record, blob: Blob) -> upload_rules.Verdict | None:
    size = int(blob.size or 0)
    if blob.time_created is not None and blob.time_created > record.url_expires_at + FINISH_GRACE:
        return upload_rules.Verdict("url_expired", "the upload arrived after its URL expired")
    if (blob.content_type or "") != record.content_type:
        return upload_rules.Verdict(
            "content_type_mismatch",
            f"the object was stored as {blob.content_type or 'no type'}, "
            f"not {record.content_type}")
    head = b""
    if size > 0:
        head = blob.download_as_bytes(start=0, end=upload_rules.SNIFF_BYTES - 1,
                                      if_generation_match=blob.generation, checksum=None)
    max_bytes = upload_rules.RULES[record.purpose].max_bytes
    return upload_rules.check_content(record.content_type, head, size, record.declared_size,
                                      max_bytes)


def _copy_out(bucket: Bucket, blob: Blob, record: uploads.Record) -> None:
    from google.api_core import exceptions

    try:
        bucket.copy_blob(blob, bucket, record.final_name, if_generation_match=0,
                         if_source_generation_match=blob.generation)
    except exceptions.PreconditionFailed:
        pass  # copied by an earlier delivery that did not get to commit


def _accept(conn: Connection, record: uploads.Record, size: int) -> None:
    import sqlalchemy

    done = conn.execute(sqlalchemy.text(
        "UPDATE uploads SET status = 'accepted', size = :size, finalized_at = now() "
        "WHERE id = :id AND status = 'pending' RETURNING 1"),
        {"id": record.id, "size": size}).first()
    if done is None:
        return
    uploads.release(conn, record.owner_id, record.declared_size, size)
    _attach(conn, record)
    log.info("upload %s accepted (%d bytes)", record.id, size, extra={
        "uploadId": record.id, "userId": record.owner_id, "purpose": record.purpose,
        "metric": {"name": "upload_bytes", "value": size, "user_id": record.owner_id}})


def _attach(conn: Connection, record: uploads.Record) -> None:
    """Show an accepted avatar, unless a newer upload is already shown (notifications may
    arrive out of order: the newest request wins)."""
    import sqlalchemy

    not_newer = ("(avatar_upload_id IS NULL OR NOT EXISTS (SELECT 1 FROM uploads u "
                 "WHERE u.id = avatar_upload_id AND u.created_at > :created))")
    params = {"id": record.id, "owner": record.owner_id, "created": record.created_at}
    if record.purpose == "avatar":
        conn.execute(sqlalchemy.text(
            "UPDATE users SET avatar_upload_id = :id, updated_at = now() "
            f"WHERE id = :owner AND status <> 'deleted' AND {not_newer}"), params)
    elif record.purpose == "character_avatar":
        conn.execute(sqlalchemy.text(
            "UPDATE characters SET avatar_upload_id = :id, updated_at = now() "
            "WHERE id = :character AND owner_id = :owner AND deleted_at IS NULL "
            f"AND {not_newer}"), params | {"character": record.character_id})


# --- maintenance --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanupResult:
    stale_pending: int = 0
    rejected_pruned: int = 0
    deleted_users: int = 0
    objects_removed: int = 0


def cleanup(grace: timedelta = PENDING_GRACE, limit: int = 1000) -> CleanupResult:
    """Reject uploads still pending `grace` after their URL expired (deleting any object they
    left), prune old rejected records, and remove every object of deleted users."""
    import sqlalchemy

    stale = removed = 0
    for _ in range(limit):
        with db.transaction() as conn:
            row = conn.execute(sqlalchemy.text(
                "SELECT id FROM uploads WHERE status = 'pending' AND url_expires_at < "
                "now() - make_interval(secs => :grace) ORDER BY url_expires_at LIMIT 1 "
                "FOR UPDATE SKIP LOCKED"), {"grace": grace.total_seconds()}).first()
            if row is None:
                break
            record = uploads.load(conn, str(row[0]))
            assert record is not None
            blob = uploads.bucket().get_blob(record.object_name)
            if blob is not None:
                _delete(blob, blob.generation)
                removed += 1
            uploads.reject(conn, record, "expired", "nothing valid arrived before the URL expired")
            stale += 1
    with db.transaction() as conn:
        pruned = conn.execute(sqlalchemy.text(
            "DELETE FROM uploads WHERE status = 'rejected' AND finalized_at < "
            "now() - make_interval(secs => :age)"),
            {"age": REJECTED_RETENTION.total_seconds()}).rowcount
    users, objects = _remove_deleted_users(limit)
    return CleanupResult(stale, pruned, users, removed + objects)


def _remove_deleted_users(limit: int) -> tuple[int, int]:
    """Carry out `uploads` cleanup jobs (user_lifecycle schedules them on deletion): every
    object under the user's prefixes is deleted, then their records and usage. A rerun finds
    nothing left to delete."""
    import sqlalchemy

    users = objects = 0
    for _ in range(limit):
        with db.transaction() as conn:
            job = conn.execute(sqlalchemy.text(
                "SELECT user_id FROM cleanup_jobs WHERE kind = 'uploads' AND done_at IS NULL "
                "ORDER BY scheduled_at LIMIT 1 FOR UPDATE SKIP LOCKED")).first()
            if job is None:
                break
            user_id = str(job[0])
            objects += remove_user_objects(uploads.bucket(), user_id)
            _forget_user_uploads(conn, user_id)
            conn.execute(sqlalchemy.text(
                "UPDATE cleanup_jobs SET done_at = now() WHERE user_id = :u AND kind = 'uploads'"),
                {"u": user_id})
            users += 1
    return users, objects


def remove_user_objects(bucket: Bucket, user_id: str) -> int:
    removed = 0
    for prefix in (f"{uploads.QUARANTINE_PREFIX}{user_id}/", f"{uploads.FINAL_PREFIX}{user_id}/"):
        for blob in bucket.list_blobs(prefix=prefix):
            _delete(blob, blob.generation)
            removed += 1
    return removed


def _forget_user_uploads(conn: Connection, user_id: str) -> None:
    import sqlalchemy

    params = {"u": user_id}
    conn.execute(sqlalchemy.text(
        "UPDATE characters SET avatar_upload_id = NULL WHERE avatar_upload_id IN "
        "(SELECT id FROM uploads WHERE owner_id = :u)"), params)
    conn.execute(sqlalchemy.text(
        "UPDATE users SET avatar_upload_id = NULL WHERE id = :u"), params)
    conn.execute(sqlalchemy.text("DELETE FROM uploads WHERE owner_id = :u"), params)
    conn.execute(sqlalchemy.text("DELETE FROM upload_usage WHERE user_id = :u"), params)
