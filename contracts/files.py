"""Atomic file writes: a reader sees the old file or the complete new one, never a part."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def partial_path(path: str | os.PathLike) -> Path:
    """The temporary name a file is written under before it is renamed into place.

    Hidden, unique to the writing process (two processes writing one file never share it), and
    with the suffix kept (``.x.<pid>.partial.gpkg``) because some writers (GDAL) choose the format by it.
    """
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)``, then rename the result to ``path``; returns ``path``.

    If ``write`` raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    partial = partial_path(path)
    partial.unlink(missing_ok=True)
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))
