"""Recipes (optimizer + schedule as functions of the step) and population training."""

from butterfly.train.population import Population, PopulationTrainer, member, stack
from butterfly.train.recipe import apply_update, init_state, lr_at

__all__ = [
    "Population",
    "PopulationTrainer",
    "apply_update",
    "init_state",
    "lr_at",
    "member",
    "stack",
]
