"""upload: signed-URL uploads to Cloud Storage, a direct multipart path for small files, the
status (with a signed download URL) of an upload, and deleting one. The bucket notification
then reaches `upload_finalize`, which accepts or rejects the object."""

from __future__ import annotations

from typing import Any

import flask
import functions_framework

from shared import errors, upload_rules
from shared.auth import authenticate, parse_uuid
from shared.bootstrap import init
from shared.http import Call, Router
from shared.validation import Field, Schema

init()

ISSUE = Schema({
    "purpose": Field("string", required=True, enum=upload_rules.PURPOSES),
    "content_type": Field("string", required=True, min_length=1, max_length=100),
    "size": Field("integer", required=True),
    "filename": Field("string", min_length=1, max_length=1000),
    "character_id": Field("string", min_length=36, max_length=36),
})
# A direct upload's body: the file plus a few short form fields and the multipart framing.
MAX_DIRECT_BODY = upload_rules.DIRECT_MAX_BYTES + 64 * 1024

app = Router("upload", authenticate=authenticate, rate_limited=True,
             max_body_bytes=MAX_DIRECT_BODY)


@app.route("POST", "/uploads", role="user", body=ISSUE,
           summary="Start an upload: a signed PUT URL for the file")
def issue(call: Call) -> tuple[dict[str, Any], int]:
    from shared import db, uploads

    with db.transaction() as conn:
        return uploads.issue(conn, call.principal.subject, dict(call.body or {})), 201


@app.route("POST", "/uploads/direct", role="user",
           summary="Upload a small file through the function (multipart/form-data)")
def direct(call: Call) -> tuple[dict[str, Any], int]:
    from shared import uploads
    from shared.multipart_stream import read_file_part

    request = call.request
    if request.mimetype != "multipart/form-data":
        raise errors.UnsupportedMediaType("send the file as multipart/form-data")
    part = read_file_part(request.stream, request.mimetype_params.get("boundary", ""))
    size = part.fields.get("size", "")
    if not size.isascii() or not size.isdigit() or len(size) > 12:
        raise errors.ValidationFailed("size is required: the file's size in bytes", errors=[
            {"field": "size", "message": "must be a whole number of bytes"}])
    fields: dict[str, Any] = {
        "purpose": part.fields.get("purpose", ""),
        "content_type": part.content_type or "application/octet-stream",
        "size": int(size), "filename": part.filename,
        "character_id": part.fields.get("character_id") or None,
    }
    record = uploads.direct_upload(call.principal.subject, fields, part.chunks)
    return uploads.view(record), 201


@app.route("GET", "/uploads/{upload_id}", role="user",
           summary="An upload's status, and a signed download URL once accepted")
def status(call: Call) -> dict[str, Any]:
    from shared import db, uploads

    with db.transaction() as conn:
        return uploads.status(conn, call.principal.subject,
                              parse_uuid(call.params["upload_id"], "upload"))


@app.route("DELETE", "/uploads/{upload_id}", role="user",
           summary="Delete my upload (or cancel it while pending)")
def delete(call: Call) -> None:
    from shared import db, uploads

    with db.transaction() as conn:
        uploads.delete(conn, call.principal.subject, parse_uuid(call.params["upload_id"], "upload"))


@functions_framework.http
def upload(request: flask.Request) -> flask.Response:
    return app(request)
