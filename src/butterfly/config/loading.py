"""From text to a validated config: ``--set key=value`` overrides, validation into a
:class:`~butterfly.config.schema.RunConfig`, and the one-sentence error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from butterfly.config.errors import ConfigError, format_error
from butterfly.config.presets import load_raw
from butterfly.config.schema import RunConfig
from butterfly.config.yamlfile import parse_yaml


def _parse_value(text: str) -> Any:
    """Parse an override value as YAML, so ``1e-3``, ``[0, 0.5]`` and ``true`` work."""
    try:
        return parse_yaml(text)
    except yaml.YAMLError as err:
        if isinstance(err, yaml.composer.ComposerError):
            raise ConfigError(f"--set value {text!r}: aliases are not allowed") from None
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config dict (a copy is returned)."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{p}' is not a section")
            node = child
        node[parts[-1]] = _parse_value(text)
    return out


def build_config(
    raw: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """Validate a raw dict (plus overrides) into a :class:`RunConfig`, or raise ConfigError."""
    data = apply_overrides(raw or {}, overrides or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_error(err, RunConfig)) from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, scale: str = "cpu"
) -> RunConfig:
    """Read a YAML config or preset (or none: the default sweep) and apply ``--set`` overrides.

    A preset holds one config per scale (``cpu``: minutes on a laptop; ``full``: the paper's
    setting); ``scale`` picks one. ``extends:`` is resolved first
    (:func:`~butterfly.config.presets.read_document`).
    """
    return build_config(load_raw(path, scale), overrides)
