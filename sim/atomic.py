"""Atomic file writes: write to a temporary file in the same folder, then ``os.replace`` it over the target.

Results (logs, models, reports, figures) are read by other processes and by people while runs are still
going; writing through a temporary file and one rename means a reader sees either the old file or the
complete new one, never a half-written result (and a crash leaves no stray temporary file behind).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "save_figure", "write_bytes_atomic", "write_text_atomic"]


def _file_mode() -> int:
    """The mode an ordinary new file gets (0o666 less the umask); mkstemp's own is owner-only (0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (created if needed); on success rename it over ``path``
    (``os.replace``), on any error delete it and re-raise.

    The temporary name is ``.<name>.<random>.tmp<suffix>``: hidden, and ending in the target's suffix so
    that writers which infer the format from the suffix (matplotlib ``savefig``, pandas) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (flushed and fsynced before the rename); return the path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def save_figure(fig, path: str | os.PathLike[str], **savefig_kwargs) -> Path:
    """``fig.savefig`` to ``path`` atomically (format from the suffix unless given); return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
    return path
