"""Reading YAML safely: ``yaml.SafeLoader`` without aliases or duplicate keys, YAML 1.2 floats."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from butterfly.config.errors import ConfigError


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` for configs: refuses aliases (an alias bomb of a few hundred bytes
    expands to gigabytes) and duplicate keys (a silent last-one-wins), and reads 1e-3 as a
    float (YAML 1.2; YAML 1.1 reads it as a string)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a config", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """A YAML document read with :class:`ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)


def read_yaml_file(p: Path, missing: ConfigError | None = None) -> dict[str, Any]:
    """The mapping in YAML file ``p`` (``{}`` for an empty file); ``missing``: the error for a
    file that does not exist."""
    if p.is_dir():
        raise ConfigError(f"config file '{p}' is a folder; give a YAML file or a preset name")
    if not p.is_file():
        raise missing or ConfigError(f"config file '{p}' does not exist")
    try:
        loaded = parse_yaml(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "parse error"
        raise ConfigError(f"config file '{p}' is not valid YAML{where}: {problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys to values")
    return loaded
