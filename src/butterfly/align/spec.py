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
        out = {}
        for p, axes in self.perm_to_axes.items():
            name, axis = next(((n, a) for n, a in axes if n in params), axes[0])
            out[p] = params[name].shape[axis]
        return out

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
            f"{type(model).__name__} has no permutation spec ({reason}); to align it, give the "
            "model a permutation_spec() method returning a butterfly.align.PermutationSpec "
            "(README, 'Your own model')"
        ) from None


# ---- derivation from the traced graph --------------------------------------------------------

F = torch.nn.functional
# Element-wise nonlinearities: they keep the channel space, and their outputs are what
# activation matching correlates.
_NONLINEAR_FUNCS = {torch.relu, F.relu, F.gelu, torch.tanh, F.tanh, torch.sigmoid, F.sigmoid,
                    F.silu, F.leaky_relu, F.elu}  # fmt: skip
_NONLINEAR_MODULES = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU)
# Keep the channel space (per-channel or per-position operations).
_PASSTHROUGH_FUNCS = _NONLINEAR_FUNCS | {
    F.dropout, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
}  # fmt: skip
_PASSTHROUGH_MODULES = (
    *_NONLINEAR_MODULES, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.MaxPool1d,
    nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
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
    activation_names: list[str]

    def activation_nodes(self, axes: tuple[Axis, ...]) -> list[str]:
        """The nonlinearity outputs whose channels a permutation with these axes reorders."""
        wanted = set(axes)
        for root, group in self.groups.items():
            if wanted & set(group):
                return [n for n in self.activation_names if self.node_group.get(n) == root]
        return []


def derive_spec(model: nn.Module) -> PermutationSpec:
    """Axis groups from the model's ``torch.fx`` graph (see :func:`analyse`)."""
    groups = analyse(model).groups
    return PermutationSpec({f"P_{i}": tuple(v) for i, v in enumerate(groups.values())})


def analyse(model: nn.Module) -> GraphAnalysis:
    """Axis groups from the ``torch.fx`` graph: tensors whose axes index the same channel space.

    Each value in the graph carries a channel space (its axis 1, or last axis for 2-D values).
    A Linear/Conv reads its input's space on weight axis 1 and creates a new space on weight
    axis 0 and its bias; norms, element-wise nonlinearities, dropout and pooling keep the space;
    additions merge spaces; flattening channels together with positions (``flatten(1)``,
    ``view``, ``reshape``) fixes the space. The input and the output are fixed (not
    permutable), and so is anything merged with them. Anything else raises
    :class:`NoPermutationSpec` naming the operation.
    """
    gm = torch.fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    uf = _UnionFind()
    fixed: set[int] = set()
    space: dict[str, int] = {}
    members: dict[int, list[Axis]] = defaultdict(list)

    shapes: set[str] = set()  # nodes that are sizes, not tensors (x.size(0), x.shape)

    def src(arg: object) -> int:
        if not isinstance(arg, torch.fx.Node) or arg.name not in space:
            raise NoPermutationSpec(f"cannot follow the channels of {arg} through the graph")
        return space[arg.name]

    def is_size(arg: object) -> bool:
        return isinstance(arg, int) or (isinstance(arg, torch.fx.Node) and arg.name in shapes)

    def flattened(node: torch.fx.Node, start: object) -> None:
        s_in = src(node.args[0])
        if not isinstance(start, int) or 0 <= start < 2:
            fixed.add(s_in)  # channels mixed with positions: not a plain axis permutation
        space[node.name] = s_in

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
                if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                    # per-channel statistics move with their channels (weight matching reads
                    # only the parameters; applying a permutation moves these too)
                    members[s_in] += [(f"{node.target}.running_mean", 0),
                                      (f"{node.target}.running_var", 0)]  # fmt: skip
                if isinstance(m, nn.GroupNorm) and 1 < m.num_groups < m.num_channels:
                    fixed.add(s_in)  # statistics per group: only permutations within groups
                space[node.name] = s_in
            elif isinstance(m, _PASSTHROUGH_MODULES):
                space[node.name] = s_in
            elif isinstance(m, nn.Flatten):
                flattened(node, m.start_dim)
            else:
                raise NoPermutationSpec(
                    f"cannot derive a spec through layer '{node.target}' ({type(m).__name__})"
                )
        elif node.op == "call_function" and node.target in _PASSTHROUGH_FUNCS:
            space[node.name] = src(node.args[0])
        elif node.op == "call_function" and node.target is torch.flatten:
            flattened(node, node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0))
        elif node.op == "call_function" and node.target in _MERGE_FUNCS:
            spaces = [space[a.name] for a in node.args if isinstance(a, torch.fx.Node)]
            for other in spaces[1:]:
                uf.union(spaces[0], other)
            space[node.name] = spaces[0]
        elif node.op == "call_method" and node.target == "flatten":
            flattened(node, node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0))
        elif (node.op == "call_method" and node.target == "size") or (
            node.op == "call_function" and node.target is getattr
            and node.args[1] == "shape"
        ):  # fmt: skip
            shapes.add(node.name)
        elif node.op == "call_function" and node.target is operator.getitem and \
                is_size(node.args[0]):  # fmt: skip
            shapes.add(node.name)  # x.shape[0]
        elif node.op == "call_method" and node.target in ("view", "reshape"):
            dims = list(node.args[1:])
            dims = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
            # x.view(x.size(0), -1): channels flattened with positions, as flatten(1)
            keeps_batch = len(dims) == 2 and is_size(dims[0]) and dims[1] == -1
            flattened(node, 1 if keeps_batch else 0)
        elif node.op == "call_method" and node.target in ("relu", "tanh", "sigmoid"):
            space[node.name] = src(node.args[0])
        elif node.op == "call_method" and node.target in ("mean", "sum", "amax"):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = dims if isinstance(dims, (tuple, list)) else (dims,)
            if any(not isinstance(d, int) or d in (0, 1) for d in dims):
                raise NoPermutationSpec(
                    f"cannot derive a spec through {node.target}(dim={dims}): it may reduce "
                    "the channel axis"
                )
            space[node.name] = src(node.args[0])  # a reduction over positions keeps channels
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
    acts = [
        n.name
        for n in gm.graph.nodes
        if (n.op == "call_function" and n.target in _NONLINEAR_FUNCS)
        or (n.op == "call_method" and n.target in ("relu", "tanh", "sigmoid"))
        or (n.op == "call_module" and isinstance(modules[n.target], _NONLINEAR_MODULES))
    ]
    node_group = {name: uf.find(s) for name, s in space.items()}
    return GraphAnalysis(gm, dict(groups), node_group, acts)

