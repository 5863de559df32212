"""Streaming `multipart/form-data` (RFC 7578): the small text fields before the file, then the
file's bytes as they arrive, never the whole body in memory or on disk (Werkzeug's
`request.files` spools large parts to a temporary file, which on Cloud Run is memory too).

A small parser of our own: Werkzeug's sans-IO decoder also accepts a bare CR or LF before a
boundary, and when a read ends between a CR and its LF it hands the CR on as file data."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from werkzeug.http import parse_options_header

from shared import errors

READ_CHUNK = 64 * 1024
MAX_FIELD_BYTES = 1024
MAX_FIELDS = 16
MAX_HEADER_BYTES = 8 * 1024
MAX_PREAMBLE_BYTES = 1024


@dataclass
class FilePart:
    fields: dict[str, str]  # the text fields sent before the file
    filename: str | None
    content_type: str | None
    chunks: Iterator[bytes]  # the file's bytes, in order, read from the request as consumed


def _bad(detail: str) -> errors.BadRequest:
    return errors.BadRequest(detail, code="invalid_multipart")


class _Reader:
    """A read buffer over the request stream that finds delimiters across reads."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.buffer = b""

    def _fill(self) -> None:
        from werkzeug.exceptions import ClientDisconnected

        try:
            chunk = self.stream.read(READ_CHUNK)
        except ClientDisconnected:
            raise _bad("the client stopped sending the body") from None
        if not chunk:
            raise _bad("the multipart body ended early")
        self.buffer += chunk

    def take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def until(self, marker: bytes, limit: int, what: str) -> bytes:
        """Everything up to `marker` (consumed, not returned), at most `limit` bytes."""
        while True:
            at = self.buffer.find(marker)
            if 0 <= at <= limit:
                out, self.buffer = self.buffer[:at], self.buffer[at + len(marker):]
                return out
            if at > limit or len(self.buffer) > limit + len(marker):
                raise _bad(f"{what} is too long")
            self._fill()

    def stream_until(self, marker: bytes) -> Iterator[bytes]:
        """The bytes up to `marker`, as they arrive; all but a possible partial marker at the
        end of the buffer are handed on at once."""
        keep = len(marker) - 1
        while True:
            at = self.buffer.find(marker)
            if at >= 0:
                out, self.buffer = self.buffer[:at], self.buffer[at + len(marker):]
                if out:
                    yield out
                return
            if len(self.buffer) > keep:
                out, self.buffer = self.buffer[:-keep], self.buffer[-keep:]
                yield out
            self._fill()


def _headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            raise _bad("a part header is malformed")
        try:
            headers[name.decode("ascii").strip().lower()] = value.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise _bad("a part header is not UTF-8") from None
    return headers


def read_file_part(stream: IO[bytes], boundary: str, file_field: str = "file") -> FilePart:
    """Read the fields up to the part named `file_field`; its bytes follow lazily."""
    if not boundary or len(boundary) > 70 or not boundary.isascii():
        raise _bad("multipart/form-data needs a boundary")
    reader = _Reader(stream)
    delimiter = b"\r\n--" + boundary.encode("ascii")
    # The first delimiter may come without the CRLF (no preamble).
    reader.buffer = b"\r\n"
    reader.until(delimiter, MAX_PREAMBLE_BYTES, "the preamble")
    fields: dict[str, str] = {}
    while True:
        after = reader.take(2)
        if after == b"--":
            raise _bad(f"the body has no {file_field!r} file part")
        if after != b"\r\n":
            raise _bad("the multipart body is malformed")
        headers = _headers(reader.until(b"\r\n\r\n", MAX_HEADER_BYTES, "a part header"))
        disposition, options = parse_options_header(headers.get("content-disposition", ""))
        name = options.get("name")
        if disposition != "form-data" or not name:
            raise _bad("every part needs Content-Disposition: form-data with a name")
        if "filename" in options:
            if name != file_field:
                raise _bad(f"unexpected file part {name!r}; send the file as {file_field!r}")
            return FilePart(fields, options["filename"] or None,
                            headers.get("content-type"), reader.stream_until(delimiter))
        value = reader.until(delimiter, MAX_FIELD_BYTES, f"field {name!r}")
        if len(fields) >= MAX_FIELDS or name in fields:
            raise _bad("too many or repeated fields")
        try:
            fields[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(f"field {name!r} is not UTF-8") from None
