"""Presets: the paper's experiments as YAML documents in ``butterfly/presets/``, one config per
scale (``cpu``: minutes on a laptop; ``full``: the paper's setting), and ``extends:`` chains.

A preset may ``extends:`` another and state only what differs: its shared top-level ``config``
applies to both scales, a scale's own ``config`` to that scale, and mappings merge key by key
while lists replace. A user's YAML may extend a preset or another file (relative to itself).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from butterfly.config.errors import ConfigError, did_you_mean
from butterfly.config.yamlfile import read_yaml_file

PRESET_DIR = Path(__file__).parent.parent / "presets"
SCALES = ("cpu", "full")
SCALE_KEYS = ("expected_runtime", "data", "note", "config")


def is_preset(doc: dict[str, Any]) -> bool:
    """A preset document: a ``description``, one section per scale (``cpu``, ``full``) and an
    optional shared ``config`` (no sweep config has any of these keys)."""
    return any(k in doc for k in ("description", "config", *SCALES))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else (lists included)
    replaces."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_path(path: str | Path, relative_to: Path | None = None) -> Path:
    """A config path as given (relative to ``relative_to``'s folder when that is set and the
    path is relative), or a packaged preset by name (``NAME``, ``presets/NAME.yaml``)."""
    p = Path(path).expanduser()
    if relative_to is not None and not p.is_absolute() and (relative_to.parent / p).is_file():
        return relative_to.parent / p
    if p.is_file():
        return p
    packaged = PRESET_DIR / (p.stem + ".yaml")
    if p.suffix in ("", ".yaml") and packaged.is_file():
        return packaged
    return p


def unknown_preset(name: str | Path) -> ConfigError:
    """The error for a config path that is neither a file nor a packaged preset."""
    stem = Path(name).stem
    presets = [q.stem for q in sorted(PRESET_DIR.glob("*.yaml"))]
    hint = did_you_mean(stem, presets, cutoff=0.6)
    return ConfigError(
        f"config file '{name}' does not exist and is not a preset{hint}; "
        "`butterfly presets` lists the presets"
    )


def read_document(path: str | Path, scale: str = "cpu", _seen: tuple[Path, ...] = ()) -> dict:
    """A config or preset file with its ``extends:`` chain resolved.

    ``extends: BASE`` (a packaged preset name or a file, relative to this one) starts from
    BASE and applies this document on top (:func:`deep_merge`). A preset may extend a preset
    (both scales, and the shared top-level ``config``, merge); a plain config may extend a
    preset, which then contributes its config at ``scale``.
    """
    p = resolve_path(path, _seen[-1] if _seen else None)
    if p.resolve() in [q.resolve() for q in _seen]:
        chain = " -> ".join(q.stem for q in (*_seen, p))
        raise ConfigError(f"config file '{p}' extends itself ({chain})")
    doc = read_yaml_file(p, unknown_preset(p))
    base_ref = doc.pop("extends", None)
    if base_ref is None:
        return _fold(doc, SCALES) if is_preset(doc) else doc
    if not isinstance(base_ref, str):
        raise ConfigError(f"config file '{p}': extends must name one preset or file")
    base = read_document(base_ref, scale, (*_seen, p))
    if is_preset(base) and not is_preset(doc):
        base = preset_config(base, scale, Path(base_ref).stem, name=False)
    elif is_preset(doc):
        doc = _fold(doc, [s for s in SCALES if s in base or s in doc])
    return deep_merge(base, doc)


def _fold(doc: dict[str, Any], scales: Iterable[str]) -> dict[str, Any]:
    """A preset with its shared top-level ``config`` folded into each scale's ``config`` (the
    scale's own keys win), so that a preset extending another overrides both of its scales."""
    shared = doc.get("config") or {}
    out = {k: v for k, v in doc.items() if k != "config"}
    for s in scales:
        if s in doc or shared:
            section = dict(doc.get(s) or {})
            section["config"] = deep_merge(shared, section.get("config") or {})
            out[s] = section
    return out


def preset_config(doc: dict[str, Any], scale: str, stem: str, name: bool = True) -> dict:
    """The config of a (folded) preset at ``scale``, named ``STEM`` (full) or ``STEM-cpu``
    unless the preset names it."""
    if scale not in SCALES:
        raise ConfigError(f"--scale must be one of {', '.join(SCALES)}; got '{scale}'")
    if scale not in doc:
        raise ConfigError(f"preset '{stem}' has no '{scale}' scale")
    cfg = dict(doc[scale].get("config") or {})
    if name and "name" not in cfg:
        cfg["name"] = stem if scale == "full" else f"{stem}-{scale}"
    return cfg


def list_presets() -> list[tuple[str, dict[str, Any]]]:
    """(name, preset document with its ``extends`` resolved) of every packaged preset."""
    return [(p.stem, read_document(p)) for p in sorted(PRESET_DIR.glob("*.yaml"))]


def load_raw(path: str | Path | None, scale: str = "cpu") -> dict[str, Any]:
    """The raw config mapping of a YAML file or preset (none: the default sweep, ``{}``)."""
    if path is None:
        return {}
    doc = read_document(path, scale)
    if is_preset(doc):
        return preset_config(doc, scale, resolve_path(path).stem)
    return doc
