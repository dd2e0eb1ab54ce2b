"""The typed config of a run: YAML + ``--set key=value`` overrides, validated before anything
runs. Every field has a default, so an empty config is the default sweep.

* :mod:`~butterfly.config.sections`: each section's fields, defaults and one line of meaning;
* :mod:`~butterfly.config.rules`: rules that join sections;
* :mod:`~butterfly.config.schema`: :class:`RunConfig`, the whole run;
* :mod:`~butterfly.config.yamlfile`, :mod:`~butterfly.config.presets`,
  :mod:`~butterfly.config.loading`: from files and overrides to a validated config;
* :mod:`~butterfly.config.errors`: :class:`ConfigError`, one sentence naming the field.

What a config cannot know by itself (epochs as steps, the device, the tokenizer, whether the
model takes the data) is settled once per run by :mod:`butterfly.experiment.resolve`.
"""

from butterfly.config.errors import ConfigError, did_you_mean
from butterfly.config.loading import apply_overrides, build_config, load_config
from butterfly.config.presets import (
    PRESET_DIR,
    SCALES,
    deep_merge,
    is_preset,
    list_presets,
    load_raw,
    preset_config,
    read_document,
    resolve_path,
    unknown_preset,
)
from butterfly.config.schema import RunConfig
from butterfly.config.sections import (
    BUILTIN_DATA,
    BUILTIN_MODELS,
    CAUSAL_DATA,
    MAX_STEPS,
    NAME_PATTERN,
    STORED,
    AugmentConfig,
    DataConfig,
    EvalConfig,
    FolderCheckpoint,
    Kind,
    Mask,
    ModelConfig,
    PerturbConfig,
    PretrainConfig,
    RecipeConfig,
    RuntimeConfig,
    SlurmConfig,
    ThresholdConfig,
    default_of,
    step_in_name,
)
from butterfly.config.yamlfile import ConfigLoader, parse_yaml

__all__ = [
    "BUILTIN_DATA",
    "BUILTIN_MODELS",
    "CAUSAL_DATA",
    "MAX_STEPS",
    "NAME_PATTERN",
    "PRESET_DIR",
    "SCALES",
    "STORED",
    "AugmentConfig",
    "ConfigError",
    "ConfigLoader",
    "DataConfig",
    "EvalConfig",
    "FolderCheckpoint",
    "Kind",
    "Mask",
    "ModelConfig",
    "PerturbConfig",
    "PretrainConfig",
    "RecipeConfig",
    "RunConfig",
    "RuntimeConfig",
    "SlurmConfig",
    "ThresholdConfig",
    "apply_overrides",
    "build_config",
    "deep_merge",
    "default_of",
    "did_you_mean",
    "is_preset",
    "list_presets",
    "load_config",
    "load_raw",
    "parse_yaml",
    "preset_config",
    "read_document",
    "resolve_path",
    "step_in_name",
    "unknown_preset",
]
