"""How a bad config is told: one sentence that names the field and what it allows.

:class:`ConfigError` is the one error a user can fix by editing the config or the command line
(exit code 2); :func:`did_you_mean` suggests a close name, and :func:`format_error` turns a
pydantic ``ValidationError`` into that one sentence.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A configuration value a user can fix. The message names the field."""


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.75) -> str:
    """`` (did you mean X?)`` for the closest of ``choices`` to a misspelt ``word``, or ``""``
    when none is close (no suggestion is better than a misleading one)."""
    word = str(word)
    prefix, _, tail = word.rpartition(".")
    # dotted keys of one section are compared by their last part only: a shared
    # "recipe." would make any two recipe keys look alike
    same = {c.rpartition(".")[2]: c for c in choices if c.rpartition(".")[0] == prefix}
    pool, wanted = (same, tail) if prefix and same else ({c: c for c in choices}, word)
    close = difflib.get_close_matches(wanted, list(pool), n=1, cutoff=cutoff)
    return f" (did you mean {pool[close[0]]}?)" if close else ""


def _section(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config class at ``loc`` (a path of field names from ``root``)."""
    model: Any = root
    for part in loc:
        f = model.model_fields.get(part) if isinstance(part, str) else None
        if f is None:
            return None
        ann = f.annotation
        candidates = [ann, *typing.get_args(ann)]
        model = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)),
                     None)  # fmt: skip
        if model is None:
            return None
    return model


def _union_tag(part: object) -> bool:
    """Whether a location part names a branch of a union (``int``, ``str``, a model class),
    not a config key (keys are lower-case identifiers)."""
    return isinstance(part, str) and (
        part in ("int", "str", "float", "bool") or "[" in part or part[:1].isupper()
    )


SECTIONS = ("seeds", "perturb.", "model.", "recipe.", "runtime.", "data.", "pretrain.", "name ",
            "threshold", "eval.")  # fmt: skip


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (an error never prints a file's content)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...'"


def format_error(err: ValidationError, root: type[BaseModel]) -> str:
    """The first error of ``err`` (raised validating a ``root`` config) as one sentence."""
    errors = err.errors()
    e = errors[0]
    msg = e["msg"]
    if e["loc"] and _union_tag(e["loc"][-1]):  # a value no branch of a union took: report
        parent = e["loc"][:-1]  # the branch that got furthest (a dict: the model's own error),
        branches = [x for x in errors if x["loc"][: len(parent)] == parent]
        e = max(branches, key=lambda x: len(x["loc"]))  # or, if none did, what each wants
        msg = e["msg"]
        if len(e["loc"]) == len(parent) + 1:
            wants = dict.fromkeys(x["msg"].removeprefix("Input should be ") for x in branches
                                  if len(x["loc"]) == len(parent) + 1)  # fmt: skip
            msg = "Input should be " + ", or ".join(wants)
    field = ".".join(str(p) for p in e["loc"] if not _union_tag(p)) or "config"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if e["type"] == "extra_forbidden":
        section = _section(root, tuple(e["loc"][:-1]))
        hint = ""
        if section is not None:
            prefix = ".".join(str(p) for p in e["loc"][:-1])
            names = [f"{prefix}.{n}" if prefix else n for n in section.model_fields]
            hint = did_you_mean(field, names)
            if not hint and prefix:  # no close name: the section's keys are the help
                hint = f" ({prefix} takes: {', '.join(section.model_fields)})"
        return f"unknown config key '{field}'{hint}: check its spelling (README, 'Configuration')"
    if e["type"] == "literal_error":
        expected = re.findall(r"'([^']*)'", msg)
        return (f"config field '{field}': {msg}, got {shown(e.get('input'))}"
                f"{did_you_mean(str(e.get('input')), expected)}")  # fmt: skip
    if msg.startswith(SECTIONS):
        return msg
    return f"config field '{field}': {shown(msg, 300)[1:-1]} (got {shown(e.get('input'))})"
