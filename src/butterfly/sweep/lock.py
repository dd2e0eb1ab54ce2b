"""One writer per run folder: an advisory ``flock`` on ``RUN_DIR/.lock``.

The kernel releases the lock when its holder dies (SIGKILL included), so a crashed run never
leaves a stale lock behind. The file records who holds it, for the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from butterfly.safepath import inside

LOCK = ".lock"


class RunLockedError(RuntimeError):
    """Another process is writing to the run folder."""


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = inside(run_dir, LOCK)
        self._fh: IO[str] | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} on {info['host']} since {info['since']}"
            except (ValueError, KeyError):
                who = "another process"
            raise RunLockedError(
                f"run folder {self.path.parent} is in use by {who}; wait for it to finish or "
                "choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                }
            )
        )
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def is_locked(run_dir: Path) -> bool:
    """Whether some process holds the run folder's lock right now."""
    path = inside(run_dir, LOCK)
    if not path.is_file():
        return False
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False
