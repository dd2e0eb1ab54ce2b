"""What every worker process of the local pool sets up when it starts.

* deterministic torch with the run's thread count;
* it exits within a second of its driver's death (Linux's parent-death signal, and a watchdog
  thread that polls the parent pid), so no orphan keeps training after a SIGKILL;
* :func:`may_write` tells a task whether its driver is still there: a worker never writes into a
  run folder once the driver that holds the folder's lock has gone;
* progress reports go to the driver through a queue handed over at start.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from typing import Any

from butterfly.experiment import configure_torch

_driver: int | None = None  # the driver's pid, in a worker process; None in the driver itself
_progress: Any = None


def _watch(driver: int) -> None:
    while True:
        if os.getppid() != driver:
            os._exit(70)  # the driver is gone: stop at once, write nothing more
        time.sleep(0.25)


def gpu_of(worker: int, gpus: int) -> int:
    """The GPU a pool's ``worker``-th process is pinned to (round robin over ``gpus``)."""
    return worker % gpus


def init_worker(
    threads: int,
    driver: int,
    progress: Any = None,
    tf32: bool = False,
    gpus: int = 0,
    counter: Any = None,
) -> None:
    """The pool's initializer: runs once in every worker process. With ``gpus``, the worker
    takes the next GPU (a shared counter) and sees only it: ``cuda`` is that GPU."""
    global _driver, _progress
    _driver, _progress = driver, progress
    if gpus and counter is not None:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_of(index, gpus))  # before CUDA starts
    configure_torch(threads, tf32)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != driver:  # the driver died while this worker was starting
        os._exit(70)
    threading.Thread(target=_watch, args=(driver,), daemon=True, name="driver-watch").start()


def may_write() -> bool:
    """Whether this process may still write into the run folder (always, outside a worker)."""
    return _driver is None or os.getppid() == _driver


def progress_queue() -> Any:
    """The driver's progress queue, in a worker of a pool that reports progress."""
    return _progress
