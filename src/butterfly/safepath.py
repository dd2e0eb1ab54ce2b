"""A run folder is a sandbox: every file butterfly reads or writes in one lies inside it.

A received run folder can hold symbolic links (``figures/`` pointing at another folder,
``config.yaml`` at another file) and a store that names sub-runs by path (``../other-run``, an
absolute path). :func:`inside` is how every run-folder path is made: each part must be one plain
name, and no folder or file on the way may be a symbolic link, so reading or writing it never
leaves the folder. The folder itself is the user's choice and may be anything.
"""

from __future__ import annotations

import re
from pathlib import Path

from butterfly.config.errors import ConfigError

PLAIN = re.compile(r"[A-Za-z0-9._{}+-][A-Za-z0-9._{}+ -]{0,199}")


def plain_name(part: str, what: str = "a run folder's file name") -> str:
    """``part`` if it is one plain file or folder name (no separator, not ``..``)."""
    if not isinstance(part, str) or part in ("", ".", "..") or not PLAIN.fullmatch(part):
        raise ConfigError(
            f"{what} {str(part)[:80]!r} is not one plain name (a path, '..' or odd characters): "
            "refused, so nothing outside the run folder is read or written"
        )
    return part


def inside(folder: str | Path, *parts: str) -> Path:
    """``folder/parts...``, refusing a part that is not one plain name and a symbolic link at
    any step below ``folder`` (the link would lead out of the run folder)."""
    path = Path(folder)
    for part in parts:
        path = path / plain_name(part)
        if path.is_symlink():
            raise ConfigError(
                f"{path} is a symbolic link: butterfly reads and writes a run folder's files "
                "only inside it (a received folder may point elsewhere); replace the link by "
                "the folder or file itself"
            )
    return path
