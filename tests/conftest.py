from __future__ import annotations

from typing import Any

import pytest
import torch

from butterfly.config import RunConfig, build_config


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def tiny_config(**sections: Any) -> RunConfig:
    """A sweep that trains in about a second: synthetic data, small MLP, 60 steps."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "seeds": [0],
        "data": {
            "name": "synthetic",
            "n_train": 256,
            "n_test": 128,
            "n_features": 12,
            "n_classes": 4,
        },
        "model": {"name": "mlp", "width": 16, "depth": 2},
        "recipe": {"steps": 60, "batch_size": 32, "lr": 0.1},
        "perturb": {"times": [0.0, 0.5], "sigmas": [1e-3, 1e-1], "kinds": ["batch", "gaussian"]},
        "runtime": {"workers": 1},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return build_config(raw)


@pytest.fixture
def tiny() -> RunConfig:
    return tiny_config()


# one local SLURM for every test module that asks for it (scripts/slurm-local)
from slurm_fixture import slurm_cluster  # noqa: E402, F401

# `make test` runs the tests in two processes (pytest-xdist, `-n 2 --dist loadgroup`). Each test
# file runs whole in one of them, so its module fixtures are built once; the SLURM files share one
# (one local cluster); the preset runs (slow, presets) are spread one by one.
SHARED_GROUPS = {"test_slurm.py": "slurm", "test_slurm_local.py": "slurm"}


def group_of(item: pytest.Item) -> str:
    name = item.path.name
    long = item.get_closest_marker("slow") or item.get_closest_marker("presets")
    if long is not None and name == "test_presets.py":
        return item.nodeid
    return SHARED_GROUPS.get(name, name)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group_of(item)))
