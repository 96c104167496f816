"""Atomic file writes, shared by every folder of the repository (not part of the remote code)."""

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Runs `write(tmp)` on a temporary file beside `path`, then renames it onto `path`: readers never see half a
    file, and a failed write leaves `path` as it was. The file gets a plain write's mode (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` (UTF-8) to `path` atomically."""
    return replace_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json_atomically(path: str | os.PathLike, payload) -> Path:
    """Writes `payload` as indented JSON (non-JSON values as `str`) to `path` atomically."""
    return write_text_atomically(path, json.dumps(payload, indent=2, default=str) + "\n")


__all__ = ["replace_atomically", "write_json_atomically", "write_text_atomically"]
