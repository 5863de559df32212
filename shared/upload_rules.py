"""What may be uploaded, for which purpose, and how the real type of a file is recognized.

Pure logic (no I/O): the `upload` function checks a request against these rules before it signs
anything, and `upload_finalize` checks the object's first bytes against the declared type with
`check_content`. The declared type is never trusted on its own: a Windows or Linux executable
named `.png` and declared `image/png` is recognized by its magic bytes and rejected.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from shared import errors

MiB = 1024 * 1024
IMAGES = ("image/png", "image/jpeg", "image/webp", "image/gif")
DOCUMENTS = ("application/pdf", "text/plain")
# The bytes the finalize consumer reads: enough for every signature below and a text check.
SNIFF_BYTES = 512
MAX_FILENAME = 255
# Direct (multipart) uploads pass through the function: small files only.
DIRECT_MAX_BYTES = 5 * MiB


@dataclass(frozen=True)
class Rule:
    content_types: tuple[str, ...]
    max_bytes: int


RULES: dict[str, Rule] = {
    "avatar": Rule(IMAGES, 5 * MiB),
    "character_avatar": Rule(IMAGES, 5 * MiB),
    "attachment": Rule(IMAGES + DOCUMENTS, 20 * MiB),
}
PURPOSES = tuple(RULES)
ALL_TYPES = tuple(dict.fromkeys(t for rule in RULES.values() for t in rule.content_types))
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif",
              "application/pdf": "pdf", "text/plain": "txt"}

# Magic numbers: (prefix at offset 0, type). Executables are named so the reason says what
# the file really is.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"MZ", "application/x-msdownload"),  # Windows PE / DOS executable
    (b"\x7fELF", "application/x-elf"),
    (b"\xcf\xfa\xed\xfe", "application/x-mach-binary"),
    (b"\xce\xfa\xed\xfe", "application/x-mach-binary"),
    (b"\xca\xfe\xba\xbe", "application/x-mach-binary"),
    (b"#!", "text/x-shellscript"),
    (b"PK\x03\x04", "application/zip"),
)
EXECUTABLES = frozenset({"application/x-msdownload", "application/x-elf",
                         "application/x-mach-binary", "text/x-shellscript"})


def sniff(head: bytes) -> str | None:
    """The type the first bytes of a file show, or None when no signature matches."""
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for prefix, kind in _SIGNATURES:
        if head.startswith(prefix):
            return kind
    return None


def _looks_like_text(head: bytes) -> bool:
    """UTF-8 (a multi-byte character cut at the end of the sample is fine) without NUL or
    other control characters than tab, newline, carriage return and form feed."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3 or exc.reason != "unexpected end of data":
            return False
        text = head[:exc.start].decode("utf-8")
    return not any((ord(c) < 32 and c not in "\t\n\r\f") or c == "\x7f" for c in text)


@dataclass(frozen=True)
class Verdict:
    """Why an object is refused: a stable `reason` code and a sentence for people."""

    reason: str
    detail: str


def check_content(declared: str, head: bytes, size: int, declared_size: int,
                  max_bytes: int) -> Verdict | None:
    """None when the object is what was declared; otherwise why it is not."""
    if size == 0:
        return Verdict("empty", "the file is empty")
    if size > max_bytes:
        return Verdict("too_large", f"the file has {size} bytes; at most {max_bytes} are allowed")
    if size != declared_size:
        return Verdict("size_mismatch",
                       f"the file has {size} bytes but {declared_size} were declared")
    found = sniff(head)
    if found in EXECUTABLES:
        return Verdict("type_mismatch", f"the file is an executable ({found}), not {declared}")
    if declared == "text/plain":
        if found is not None or not _looks_like_text(head):
            return Verdict("type_mismatch", f"the file is {found or 'binary data'}, not text")
        return None
    if found != declared:
        return Verdict("type_mismatch",
                       f"the file is {found or 'of an unknown type'}, not {declared}")
    return None


def check_request(purpose: str, content_type: str, size: int) -> Rule:
    """The rule for `purpose`; 422 when the type or size is not allowed for it."""
    rule = RULES.get(purpose)
    if rule is None:
        raise errors.ValidationFailed("unknown purpose", code="invalid_purpose", errors=[
            {"field": "purpose", "message": "must be one of " + ", ".join(PURPOSES)}])
    media = content_type.split(";")[0].strip().lower()
    if media not in rule.content_types or media != content_type:
        raise errors.ValidationFailed(
            f"{purpose} uploads must be one of {', '.join(rule.content_types)}",
            code="unsupported_type",
            errors=[{"field": "content_type", "message": "is not allowed for this purpose"}])
    if size <= 0:
        raise errors.ValidationFailed("the file is empty", code="empty_file", errors=[
            {"field": "size", "message": "must be at least 1 byte"}])
    if size > rule.max_bytes:
        raise errors.PayloadTooLarge(
            f"{purpose} uploads are at most {rule.max_bytes} bytes", code="file_too_large")
    return rule


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean_filename(name: str | None) -> str | None:
    """The display name of a file, or 422 when it is path-like or carries control characters.
    Never used to build an object name."""
    if name is None:
        return None
    normalized = unicodedata.normalize("NFC", name).strip()
    bad = (not normalized or len(normalized) > MAX_FILENAME or "/" in normalized
           or "\\" in normalized or normalized in (".", "..") or bool(_CONTROL.search(normalized)))
    if bad:
        raise errors.ValidationFailed(
            "filename must be a plain file name (no path, no control characters)",
            code="invalid_filename",
            errors=[{"field": "filename", "message": "must be a plain file name"}])
    return normalized
