"""Objects a user names by import path: ``package.module:attribute``.

A config refers to a user's model factory, data loader or loss function by import path, so
every worker process (and a Ray task on another machine) finds the same object by importing
it; the module must be importable there (installed, or on ``PYTHONPATH``). Objects handed in
from Python are named the same way when they are importable; ones that are not (a lambda, a
function defined inside another, anything defined in a notebook) are *local*: registered in
this process only, so the work runs in this process.
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Any

IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
LOCAL = "local:"
_registry: dict[str, Any] = {}


class ImportPathError(ValueError):
    """An import path that does not name an importable object; the message says why."""


def is_import_path(text: str) -> bool:
    return bool(IMPORT_PATH.fullmatch(text))


def resolve(path: str, what: str = "object") -> Any:
    """The object named ``package.module:attribute`` (or a local object of this process)."""
    if path in _registry:
        return _registry[path]
    if path.startswith(LOCAL):
        raise ImportPathError(
            f"{what} '{path}' was defined in another Python session and is not importable: "
            "pass the same object again, or define it in an importable module"
        )
    if not is_import_path(path):
        raise ImportPathError(f"{what} '{path}' is not an import path like package.module:name")
    module_name, attr = path.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportPathError(
            f"{what} '{path}' cannot be imported ({err}); is the module installed or on "
            "PYTHONPATH?"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportPathError(
                f"{what} '{path}': module '{module_name}' has no attribute '{attr}'"
            ) from None
    return obj


def _interactive_main() -> bool:
    main = sys.modules.get("__main__")
    return main is None or not hasattr(main, "__file__")


def name_of(obj: Any) -> str:
    """The import path of ``obj`` if importing it gives it back, else a local name registered
    in this process (``local:QUALNAME``)."""
    module = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    if module and qual and "<" not in qual and not (module == "__main__" and _interactive_main()):
        path = f"{module}:{qual}"
        try:
            if resolve(path) is obj:
                return path
        except ImportPathError:
            pass
    local = f"{LOCAL}{qual}"
    _registry[local] = obj
    return local


def is_local(path: str) -> bool:
    """Whether only this process can resolve ``path`` (so the work must run here)."""
    return path.startswith(LOCAL)
