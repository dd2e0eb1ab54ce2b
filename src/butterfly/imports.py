"""Objects a user names by import path: ``package.module:attribute``.

A config refers to a user's model factory, data loader or loss function by import path, so
every worker process (and a Ray task on another machine) finds the same object by importing
it; the module must be importable there (installed, or on ``PYTHONPATH``). Objects handed in
from Python are named the same way when they are importable; ones that are not (a lambda, a
function defined inside another, anything defined in a notebook) are *local*: registered in
this process only, so the work runs in this process.

An import path in a config is code: importing a module runs it, and the object named is called
with the config's keyword arguments. So a config from someone else deserves the care of a script
from someone else. Two guards: a path into the Python standard library is refused (it holds no
model, loader or loss, and it can run commands: ``os:system``), and ``BUTTERFLY_IMPORT_ALLOW``
(comma-separated module prefixes, e.g. ``mylab,tests``) restricts import paths to a lab's own
packages. Nothing read from a checkpoint or a run folder is ever imported
(:mod:`butterfly.comparison`, ``butterfly status``, ``report`` and ``repair``).
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
LOCAL = "local:"
ALLOW_ENV = "BUTTERFLY_IMPORT_ALLOW"
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
    check_allowed(path, what)
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


def allowed_prefixes() -> list[str] | None:
    """The module prefixes ``BUTTERFLY_IMPORT_ALLOW`` allows (None: not set)."""
    raw = os.environ.get(ALLOW_ENV)
    if raw is None or not raw.strip():
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def check_allowed(path: str, what: str = "object") -> None:
    """Refuse, before anything is imported, an import path into the standard library or
    outside ``BUTTERFLY_IMPORT_ALLOW``."""
    module = path.split(":", 1)[0]
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        raise ImportPathError(
            f"{what} '{path}' names Python's standard library ('{top}'), which holds no model, "
            "data loader or loss and can run commands; butterfly does not import it (name a "
            "module of your own)"
        )
    prefixes = allowed_prefixes()
    if prefixes is not None and not any(module == p or module.startswith(p + ".")
                                        for p in prefixes):  # fmt: skip
        raise ImportPathError(
            f"{what} '{path}' is outside {ALLOW_ENV} ({', '.join(prefixes)}): only those "
            "packages' code is imported; add its package there if you trust it"
        )


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


def unguarded_main() -> bool:
    """Whether the main program is a script whose top level would run again in every spawned
    worker process (no ``if __name__ == "__main__":`` test anywhere in it)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py") or not Path(path).is_file():
        return False
    try:
        tree = ast.parse(Path(path).read_text())
    except (SyntaxError, UnicodeDecodeError, OSError):
        return False
    for node in ast.walk(tree):
        left = getattr(node, "left", None) if isinstance(node, ast.Compare) else None
        if isinstance(left, ast.Name) and left.id == "__name__":
            return False
    return True
