"""Files of a stack's folder, replaced whole: a reader never sees half a file, and a secret's file
is never readable by others, not even for a moment (``env``, ``state.json``, ``demo-key``)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, text: str, *, mode: int) -> None:
    """Replace ``path`` with ``text``, created with ``mode`` (the umask may only take away)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as fh:
        fh.write(text)
    tmp.chmod(mode)
    tmp.replace(path)
