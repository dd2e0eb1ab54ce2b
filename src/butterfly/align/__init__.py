"""Permutation alignment: specs as data, weight matching and activation matching."""

from butterfly.align.activation_matching import (
    NoActivations,
    activation_matching,
    hidden_activations,
)
from butterfly.align.permute import (
    apply_permutation,
    compose,
    fixed_point_fraction,
    identity,
    is_identity,
    random_perms,
    spec_error,
)
from butterfly.align.spec import NoPermutationSpec, PermutationSpec, analyse, derive_spec, spec_for
from butterfly.align.weight_matching import MatchResult, weight_matching

__all__ = [
    "MatchResult",
    "NoActivations",
    "NoPermutationSpec",
    "PermutationSpec",
    "activation_matching",
    "analyse",
    "apply_permutation",
    "compose",
    "derive_spec",
    "fixed_point_fraction",
    "hidden_activations",
    "identity",
    "is_identity",
    "random_perms",
    "spec_error",
    "spec_for",
    "weight_matching",
]
