"""Permutation specs as data (after samuela/git-re-basin): which axes of which tensors share a
permutation of hidden units.

A :class:`PermutationSpec` maps each permutation name to the ``(tensor, axis)`` pairs it acts
on. The built-in MLP, CNN and ResNet write theirs by hand as a ``permutation_spec()`` method in
their own module; :func:`derive_spec` derives the same axis groups from any model's ``torch.fx``
graph by tracking which tensors' axes index the same "channel space" (tests check the two
agree), and :func:`spec_for` uses it for models without a spec of their own.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from butterfly.layers import NORM_TYPES, WEIGHT_TYPES

Axis = tuple[str, int]


@dataclass(frozen=True)
class PermutationSpec:
    """``perm_to_axes[p]`` lists the (tensor name, axis) pairs permuted by ``p``."""

    perm_to_axes: dict[str, tuple[Axis, ...]]

    @property
    def axes_to_perm(self) -> dict[str, dict[int, str]]:
        out: dict[str, dict[int, str]] = defaultdict(dict)
        for p, axes in self.perm_to_axes.items():
            for name, axis in axes:
                out[name][axis] = p
        return dict(out)

    def sizes(self, params: dict[str, torch.Tensor]) -> dict[str, int]:
        return {p: params[axes[0][0]].shape[axes[0][1]] for p, axes in self.perm_to_axes.items()}

    def groups(self) -> set[frozenset[Axis]]:
        """The partition of axes, without the permutation names (for comparing specs)."""
        return {frozenset(v) for v in self.perm_to_axes.values()}


class NoPermutationSpec(ValueError):
    """Alignment was asked for a model without a permutation spec."""


def spec_for(model: nn.Module) -> PermutationSpec:
    """The model's own spec (``model.permutation_spec()``, written by hand next to each built-in
    model), else one derived from its traced graph."""
    own = getattr(model, "permutation_spec", None)
    if callable(own):
        return own()
    try:
        return derive_spec(model)
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise NoPermutationSpec(
            f"{type(model).__name__} has no permutation spec ({reason}); write one (see "
            "butterfly.align.spec) or set eval.weight_matching, eval.activation_matching to "
            "false and eval.proxy_fractions to []"
        ) from None


# ---- derivation from the traced graph --------------------------------------------------------

_PASSTHROUGH_FUNCS = {torch.relu, torch.nn.functional.relu, torch.tanh, torch.sigmoid}
_MERGE_FUNCS = {operator.add, torch.add, operator.mul}


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def make(self) -> int:
        i = len(self.parent)
        self.parent[i] = i
        return i

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


@dataclass
class GraphAnalysis:
    """Channel spaces of a traced model: permutable axis groups and the nodes living in each."""

    graph_module: torch.fx.GraphModule
    groups: dict[int, list[Axis]]
    node_group: dict[str, int]
    relu_nodes: list[str]

    def activation_nodes(self, axes: tuple[Axis, ...]) -> list[str]:
        """The ReLU outputs whose channels a permutation with these axes reorders."""
        wanted = set(axes)
        for root, group in self.groups.items():
            if wanted & set(group):
                return [n for n in self.relu_nodes if self.node_group.get(n) == root]
        return []


def derive_spec(model: nn.Module) -> PermutationSpec:
    """Axis groups from the model's ``torch.fx`` graph (see :func:`analyse`)."""
    groups = analyse(model).groups
    return PermutationSpec({f"P_{i}": tuple(v) for i, v in enumerate(groups.values())})


def analyse(model: nn.Module) -> GraphAnalysis:
    """Axis groups from the ``torch.fx`` graph: tensors whose axes index the same channel space.

    Each value in the graph carries a channel space (its axis 1, or last axis for 2-D values).
    A Linear/Conv reads its input's space on weight axis 1 and creates a new space on weight
    axis 0 and its bias; norms, ReLUs and pooling keep the space; additions merge spaces. The
    input and the output are fixed (not permutable), and so is anything merged with them.
    """
    gm = torch.fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    uf = _UnionFind()
    fixed: set[int] = set()
    space: dict[str, int] = {}
    members: dict[int, list[Axis]] = defaultdict(list)

    def src(arg: object) -> int:
        assert isinstance(arg, torch.fx.Node), arg
        return space[arg.name]

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            s = uf.make()
            fixed.add(s)
            space[node.name] = s
        elif node.op == "call_module":
            m = modules[node.target]
            s_in = src(node.args[0])
            if isinstance(m, WEIGHT_TYPES):
                members[s_in].append((f"{node.target}.weight", 1))
                s = uf.make()
                members[s].append((f"{node.target}.weight", 0))
                if m.bias is not None:
                    members[s].append((f"{node.target}.bias", 0))
                space[node.name] = s
            elif isinstance(m, NORM_TYPES):
                for pname, _ in m.named_parameters(recurse=False):
                    members[s_in].append((f"{node.target}.{pname}", 0))
                space[node.name] = s_in
            elif isinstance(m, (nn.ReLU, nn.Identity, nn.Tanh)):
                space[node.name] = s_in
            else:
                raise NoPermutationSpec(f"cannot derive a spec through module {type(m).__name__}")
        elif node.op == "call_function" and node.target in _PASSTHROUGH_FUNCS:
            space[node.name] = src(node.args[0])
        elif node.op == "call_function" and node.target in _MERGE_FUNCS:
            spaces = [space[a.name] for a in node.args if isinstance(a, torch.fx.Node)]
            for other in spaces[1:]:
                uf.union(spaces[0], other)
            space[node.name] = spaces[0]
        elif node.op == "call_method" and node.target in ("flatten", "mean"):
            s_in = src(node.args[0])
            if node.target == "flatten":
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                if start < 2:  # channels mixed with positions: not a plain axis permutation
                    fixed.add(s_in)
            space[node.name] = s_in  # flatten(2) and mean over positions keep the channel axis
        elif node.op == "output":
            fixed.add(src(node.args[0]))
        else:
            raise NoPermutationSpec(f"cannot derive a spec through {node.op} {node.target}")

    fixed_roots = {uf.find(s) for s in fixed}
    groups: dict[int, list[Axis]] = defaultdict(list)
    for s, axes in members.items():
        root = uf.find(s)
        if root not in fixed_roots:
            groups[root].extend(axes)
    relus = [
        n.name
        for n in gm.graph.nodes
        if (n.op == "call_function" and n.target in (torch.relu, torch.nn.functional.relu))
        or (n.op == "call_module" and isinstance(modules[n.target], nn.ReLU))
    ]
    node_group = {name: uf.find(s) for name, s in space.items()}
    return GraphAnalysis(gm, dict(groups), node_group, relus)
