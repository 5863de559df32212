"""Source archives for Cloud Run functions: the function folder + `shared/` + requirements.txt.

Archives are byte-for-byte reproducible (sorted entries, fixed timestamps and modes), and named
by the SHA-256 of what goes in them, so an unchanged function keeps its object name and Pulumi
does not redeploy it; any change to its code, the shared library or the requirements does.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can hold
_SKIP_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


@dataclass(frozen=True)
class SourceArchive:
    name: str  # object name in the sources bucket, content-addressed
    path: Path  # the zip on local disk
    sha256: str


def _files(root: Path, folder: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not _SKIP_DIRS & set(path.relative_to(root).parts) \
                and path.suffix not in {".pyc", ".pyo"}:
            yield path.relative_to(root).as_posix(), path


def entries(source: str | None, root: Path = REPO) -> list[tuple[str, Path]]:
    """(name in archive, file) pairs: the function's main.py at the top, `shared/` beside it.
    With no source folder: `shared/` and the requirements alone (the migration job)."""
    items: list[tuple[str, Path]] = []
    if source is not None:
        items = [(name.removeprefix(f"{source}/"), path)
                 for name, path in _files(root, root / source)]
    items += list(_files(root, root / "shared"))
    items.append(("requirements.txt", root / "requirements.txt"))
    return sorted(items)


def content_hash(items: list[tuple[str, Path]]) -> str:
    digest = hashlib.sha256()
    for name, path in items:
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build(name: str, source: str | None, out_dir: Path, root: Path = REPO) -> SourceArchive:
    """Write `<out_dir>/<name>-<hash16>.zip` (once per content) and describe it."""
    items = entries(source, root)
    sha = content_hash(items)
    object_name = f"{name}-{sha[:16]}.zip"
    path = out_dir / object_name
    if not path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for arcname, file in items:
                info = zipfile.ZipInfo(arcname, _FIXED_TIME)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, file.read_bytes())
        tmp.replace(path)
    return SourceArchive(object_name, path, sha)
