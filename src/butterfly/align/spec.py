"""Permutation specs as data (after samuela/git-re-basin): which axes of which tensors share a
permutation of hidden units.

A :class:`PermutationSpec` maps each permutation name to the ``(tensor, axis)`` pairs it acts
on. The built-in MLP, CNN and ResNet write theirs by hand as a ``permutation_spec()`` method in
their own module; :func:`derive_spec` derives the same axis groups from any model's ``torch.fx``
graph by tracking which tensors' axes index the same "channel space" (tests check the two
agree), and :func:`spec_for` uses it for models without a spec of their own.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from butterfly.layers import NORM_TYPES, canonical_names

Axis = tuple[str, int] | tuple[str, int, int]  # (tensor, axis) or (tensor, axis, offset)


def entry(a: Axis) -> tuple[str, int, int]:
    """``(tensor, axis, offset)``: a permutation of n units acts on positions offset..offset+n
    of that axis (offset 0 for a whole axis; packed projections such as a q/k/v matrix of
    3 x d rows give each part its own offset)."""
    return (a[0], a[1], a[2] if len(a) > 2 else 0)  # type: ignore[misc]


@dataclass(frozen=True)
class PermutationSpec:
    """``perm_to_axes[p]`` lists the (tensor name, axis[, offset]) entries permuted by ``p``.

    ``size[p]``: the number of units of a permutation acting on parts of axes (default: the
    length of its first axis). ``heads[p] = (group, d)``: ``p`` permutes attention heads of d
    units as blocks and the units within each head, ``p[h d + j] = s[h] d + q_h[j]``; the
    permutations of one group (a layer's query/key units and its value/output units) share
    the head permutation ``s`` and each has its own within-head permutations ``q_h``.
    """

    perm_to_axes: dict[str, tuple[Axis, ...]]
    size: dict[str, int] = field(default_factory=dict)
    heads: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def slots(self) -> dict[str, list[tuple[int, int, str]]]:
        """Per tensor, the (axis, offset, permutation) entries acting on it."""
        out: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
        for p, axes in self.perm_to_axes.items():
            for a in axes:
                name, axis, off = entry(a)
                out[name].append((axis, off, p))
        return dict(out)

    def sizes(self, params: dict[str, torch.Tensor]) -> dict[str, int]:
        out = {}
        for p, axes in self.perm_to_axes.items():
            if p in self.size:
                out[p] = self.size[p]
                continue
            name, axis = next(((a[0], a[1]) for a in axes if a[0] in params), axes[0][:2])
            out[p] = params[name].shape[axis]
        return out

    def groups(self) -> set[frozenset[Axis]]:
        """The partition of axes, without the permutation names (for comparing specs)."""
        return {frozenset(v) for v in self.perm_to_axes.values()}

    def head_groups(self) -> dict[str, list[str]]:
        """Head group -> its permutations, in spec order."""
        out: dict[str, list[str]] = defaultdict(list)
        for p in self.perm_to_axes:
            if p in self.heads:
                out[self.heads[p][0]].append(p)
        return dict(out)

    def attention_perms(self) -> set[str]:
        """The permutations of attention head groups (several sharing one head order)."""
        return {p for ps in self.head_groups().values() if len(ps) > 1 for p in ps}

    def keep(self, ok: set[str]) -> PermutationSpec:
        """This spec with only the permutations in ``ok``; a head group loses all its
        permutations when it loses one (they share the head order)."""
        drop = set(self.perm_to_axes) - ok
        for perms in self.head_groups().values():
            if drop & set(perms):
                drop |= set(perms)
        kept = {p: axes for p, axes in self.perm_to_axes.items() if p not in drop}
        return PermutationSpec(kept, {p: n for p, n in self.size.items() if p in kept},
                               {p: h for p, h in self.heads.items() if p in kept})  # fmt: skip


class NoPermutationSpec(ValueError):
    """Alignment was asked for a model without a permutation spec."""


def spec_for(model: nn.Module, example: torch.Tensor | None = None) -> PermutationSpec:
    """The model's own spec (``model.permutation_spec()``, written by hand next to each built-in
    model), else one derived from its traced graph (``example``: a few inputs, which give the
    derivation every value's shape)."""
    own = getattr(model, "permutation_spec", None)
    if callable(own):
        return own()
    try:
        return derive_spec(model, example)
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
_NONLINEAR_METHODS = {"relu", "tanh", "sigmoid"}
# Element-wise (or along one axis and equivariant there): the permuted axis stays where it is.
_ELEMENTWISE_FUNCS = _NONLINEAR_FUNCS | {
    F.dropout, F.softmax, F.log_softmax, torch.softmax, torch.exp, torch.sqrt, torch.rsqrt,
    torch.neg, torch.abs, torch.square, F.mish, F.hardtanh, F.relu6, F.softplus,
}  # fmt: skip
_ELEMENTWISE_METHODS = _NONLINEAR_METHODS | {
    "contiguous", "float", "double", "half", "bfloat16", "to", "type", "clone", "detach", "exp",
    "sqrt", "rsqrt", "neg", "abs", "square", "softmax", "log_softmax", "masked_fill",
}  # fmt: skip
_ELEMENTWISE_MODULES = (*_NONLINEAR_MODULES, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                        nn.Softmax, nn.Mish, nn.Hardtanh, nn.ReLU6, nn.Softplus)  # fmt: skip
# Pooling over positions: keeps a channel axis 1 (N, C, positions...).
_POOL_FUNCS = {
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
}  # fmt: skip
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)  # fmt: skip
_BINARY_FUNCS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul,
                 operator.imul, operator.truediv, operator.itruediv, torch.add, torch.sub,
                 torch.mul, torch.div}  # fmt: skip
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin", "var", "std", "norm", "logsumexp"}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax, torch.amin, torch.var, torch.std,
                 torch.logsumexp}  # fmt: skip
# (the old tuple, kept for anyone who imported it)
_PASSTHROUGH_MODULES = (*_ELEMENTWISE_MODULES, *_POOL_MODULES)
_MERGE_FUNCS = {operator.add, torch.add, operator.mul}

Value = tuple[int, int] | None  # (channel space, the axis it is on), or None: nothing permuted


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
    """Channel spaces of a traced model: permutable axis groups and the nodes living in each
    (``node_axis``: the axis of a node's output that carries its space)."""

    graph_module: torch.fx.GraphModule
    groups: dict[int, list[Axis]]
    node_group: dict[str, int]
    activation_names: list[str]
    node_axis: dict[str, int] = field(default_factory=dict)
    # attention layers: (query/key entries, value/output entries, units, units per head)
    heads: list[tuple[tuple[Axis, ...], tuple[Axis, ...], int, int]] = field(default_factory=list)
    # groups normalised by a GroupNorm: root -> channels per group (moved as blocks)
    blocks: dict[int, int] = field(default_factory=dict)

    def activation_nodes(self, axes: tuple[Axis, ...]) -> list[str]:
        """The nonlinearity outputs whose channels a permutation with these axes reorders."""
        wanted = set(axes)
        for root, group in self.groups.items():
            if wanted & set(group):
                return [n for n in self.activation_names if self.node_group.get(n) == root]
        return []


def derive_spec(model: nn.Module, example: torch.Tensor | None = None) -> PermutationSpec:
    """Axis groups from the model's ``torch.fx`` graph (see :func:`analyse`), and a head group
    per attention layer (its query/key units and its value/output units)."""
    an = analyse(model, example)
    perms: dict[str, tuple[Axis, ...]] = {f"P_{i}": tuple(v) for i, v in enumerate(an.groups.values())}
    size: dict[str, int] = {}
    # a GroupNorm's channels: groups as blocks, channels within each (a head group of one)
    heads: dict[str, tuple[str, int]] = {f"P_{i}": (f"G{i}", an.blocks[r])
                                         for i, r in enumerate(an.groups) if r in an.blocks}  # fmt: skip
    for j, (qk, vo, n, d) in enumerate(an.heads):
        for part, axes in (("qk", qk), ("vo", vo)):
            perms[f"H{j}_{part}"] = axes
            size[f"H{j}_{part}"] = n
            heads[f"H{j}_{part}"] = (f"H{j}", d)
    return PermutationSpec(perms, size, heads)


class _Tracer(torch.fx.Tracer):
    """``symbolic_trace`` with buffers as graph values, so that code slicing a buffer by a
    traced size (a causal mask cut to the sequence length) traces."""

    proxy_buffer_attributes = True


class _Shapes(torch.fx.Interpreter):
    """Runs the traced graph once and records every node's output shape (tensors) or shapes
    (tuples of tensors)."""

    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__(gm)
        self.shapes: dict[str, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n.name] = tuple(out.shape)
        elif isinstance(out, (tuple, list)):
            self.shapes[n.name] = [tuple(o.shape) if isinstance(o, torch.Tensor) else None
                                   for o in out]  # fmt: skip
        return out


def analyse(model: nn.Module, example: torch.Tensor | None = None) -> GraphAnalysis:
    """Axis groups from the ``torch.fx`` graph: tensors whose axes index the same channel space.

    Every value in the graph carries at most one permutable axis and its channel space.
    ``example`` (a few inputs) gives every value's shape, so the axis is known exactly: the
    last axis of a transformer's (N, T, C) activations, axis 1 of a convolution's (N, C, H, W);
    without it, values are taken as (N, C, ...). A Linear (or ``F.linear``) reads its input's
    space on weight axis 1 and creates a new space on weight axis 0 and its bias; a
    convolution the same on axis 1; an embedding creates one on its weight's axis 1; norms
    (torch's or ``F.layer_norm``, with their gains and BatchNorm's running statistics),
    element-wise functions, softmax, dropout and pooling keep the space; additions and
    multiplications merge the spaces they broadcast together (a 1-D parameter multiplied in
    joins); transposes, ``unsqueeze``, indexing of other axes, ``split``/``chunk`` along them
    and reductions over them move the axis; reductions over it (a LayerNorm's mean) leave a
    value that no permutation changes; a reshape that keeps the axis whole keeps it, one that
    splits it (attention heads) or mixes it with positions (``view(x.size(0), -1)``) fixes it.
    ``nn.MultiheadAttention`` reads its input's space on its input projection and creates a
    new space on its output projection. Any other operation fixes the spaces of its inputs and
    the parameters it reads, and its output has nothing permuted; the input and the output
    are fixed. A tensor axis used in two places (tied weights, a layer called twice) joins
    its spaces. What remains free are the permutable groups.
    """
    gm = torch.fx.GraphModule(model, _Tracer().trace(model))
    modules = dict(gm.named_modules())
    canon = canonical_names(model)
    shapes: dict[str, Any] = {}
    if example is not None:
        rec = _Shapes(gm)
        was = model.training
        model.eval()  # BatchNorm reads its statistics, never updates them
        try:
            with torch.no_grad():
                rec.run(example)
        finally:
            model.train(was)
        shapes = rec.shapes
    uf = _UnionFind()
    fixed: set[int] = set()
    fixed_params: set[str] = set()
    ch: dict[str, Value] = {}
    seq: dict[str, list[Value]] = {}  # tuple-valued nodes (split, chunk, attention)
    attr: dict[str, str] = {}  # get_attr node (or a parameter expanded) -> the tensor's name
    attr_off: dict[str, int] = {}  # ... and how many leading axes the value has before its own
    members: dict[int, list[Axis]] = defaultdict(list)
    where: dict[Axis, int] = {}  # a tensor axis -> the space it was put in
    sizes: set[str] = set()  # nodes that are sizes, not tensors (x.size(0), x.shape)
    heads: list[tuple[tuple[Axis, ...], tuple[Axis, ...], int, int]] = []
    blocks: dict[int, set[int]] = defaultdict(set)  # GroupNorm spaces: channels per group
    mha_done: set[str] = set()

    # attention heads of hand-written attention: a projection's units viewed as (heads, units
    # per head), queries against keys, scores against values, merged back before the output
    # projection. A *part* is a range of one space's units (a packed q|k|v projection has
    # three); a headed value carries its part(s) and where its part, head and unit axes are.
    parts: list[dict[str, Any]] = []
    parted: dict[int, list[int]] = defaultdict(list)
    hv: dict[str, tuple[tuple[int, ...], int | None, int, int]] = {}
    pvs: dict[str, tuple[int, int]] = {}  # a part not yet split into heads: (part, axis)
    hseq: dict[str, list[Any]] = {}  # tuple nodes holding parts or headed values
    sc: dict[str, tuple[int, int, int]] = {}  # attention scores: (q part, k part, head axis)
    links: list[tuple[int, int, int]] = []  # the (q, k, v) parts of one attention

    def name_of(n: str) -> str:
        return canon.get(n, n)

    def add(space: int, name: str, axis: int) -> None:
        key = (name_of(name), axis)
        if key in where:
            uf.union(where[key], space)  # tied or reused: one permutation
        else:
            where[key] = space
            members[space].append(key)

    def shape(a: object) -> tuple[int, ...] | None:
        if isinstance(a, torch.fx.Node):
            sh = shapes.get(a.name)
            return sh if isinstance(sh, tuple) else None
        return None

    def nd(a: object) -> int | None:
        sh = shape(a)
        return None if sh is None else len(sh)

    def val(a: object) -> Value:
        if isinstance(a, torch.fx.Node):
            return ch.get(a.name)
        return None

    def fix(v: Value) -> None:
        if v is not None:
            fixed.add(v[0])

    def nodes_in(a: object) -> list[torch.fx.Node]:
        if isinstance(a, torch.fx.Node):
            return [a]
        if isinstance(a, (tuple, list)):
            return [n for x in a for n in nodes_in(x)]
        if isinstance(a, dict):
            return [n for x in a.values() for n in nodes_in(x)]
        if isinstance(a, slice):
            return [n for x in (a.start, a.stop, a.step) for n in nodes_in(x)]
        return []

    def opaque(node: torch.fx.Node) -> Value:
        """An operation not understood: its inputs' spaces and its parameters stay fixed."""
        for n in nodes_in((node.args, node.kwargs)):
            fix(ch.get(n.name))
            for v in seq.get(n.name, []):
                fix(v)
            if n.name in attr:
                fixed_params.add(attr[n.name])
        if node.op == "call_module":
            fixed_params.update(name_of(f"{node.target}.{p}")
                                for p, _ in modules[node.target].named_parameters())  # fmt: skip
        return None

    def last(node: torch.fx.Node, v: Value) -> bool:
        """Whether ``v``'s axis is the last axis of ``node`` (unknown shapes: axis 1)."""
        n = nd(node)
        return v is not None and v[1] == (n - 1 if n is not None else 1)

    def out_axis(node: torch.fx.Node, channel_first: bool) -> int:
        n = nd(node)
        return 1 if channel_first or n is None else n - 1

    def weight_layer(node: torch.fx.Node, x: object, w: str, b: str | None, conv: bool) -> Value:
        v = val(x)
        ok = (v is not None and v[1] == 1) if conv else last(x, v)  # type: ignore[arg-type]
        if ok:
            assert v is not None
            add(v[0], w, 1)
        else:
            fix(v)
        s = uf.make()
        add(s, w, 0)
        if b is not None:
            add(s, b, 0)
        return (s, out_axis(node, conv))

    def norm_over_last(x: object, params: list[str], k: int) -> Value:
        v = val(x)
        n = nd(x)
        if v is None:
            return None
        if n is None or v[1] < n - k:  # the normalised axes are other axes
            return v
        if k == 1:
            for p in params:
                add(v[0], p, 0)
            return v
        fix(v)
        return None

    def binary(node: torch.fx.Node, a: object, b: object) -> Value:
        va, vb = val(a), val(b)
        sa, sb, so = shape(a), shape(b), shapes.get(node.name)
        if not isinstance(so, tuple):  # shapes unknown: merge what is permuted
            if va is not None and vb is not None:
                uf.union(va[0], vb[0])
            return va or vb
        out: Value = None
        spaces: list[tuple[Value, object, tuple[int, ...] | None]] = [(va, a, sa), (vb, b, sb)]
        for v, _, sh in spaces:
            if v is not None and sh is not None:
                pos = len(so) - (len(sh) - v[1])  # its axis in the output
                if out is None:
                    out = (v[0], pos)
                elif out[1] == pos:
                    uf.union(out[0], v[0])
                else:
                    fix(out)
                    fix(v)
                    return None
        if out is None:
            return None
        for v, x, sh in spaces:
            if v is not None or sh is None:
                continue
            k = len(so) - out[1]  # the axis counted from the right
            if len(sh) < k or sh[len(sh) - k] == 1:
                continue  # broadcast along the permuted axis: fine
            if isinstance(x, torch.fx.Node) and x.name in attr and len(sh) - k >= attr_off.get(x.name, 0):
                # a parameter added or multiplied in: permuted with the axis it meets
                add(out[0], attr[x.name], len(sh) - k - attr_off.get(x.name, 0))
            else:
                fix(out)
                return None
        return out

    def dims_of(node: torch.fx.Node, default: object = None) -> list[int] | None:
        d = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", default)
        if d is None:
            return None
        return list(d) if isinstance(d, (tuple, list)) else [d]  # type: ignore[list-item]

    def norm_dim(d: int, n: int) -> int:
        return d + n if d < 0 else d

    def reduce(node: torch.fx.Node, x: object) -> Value:
        v = val(x)
        n = nd(x)
        if v is None:
            return None
        dims = dims_of(node)
        if dims is None or n is None:
            if dims is not None and all(isinstance(d, int) and d not in (0, 1) for d in dims):
                return v  # unknown shapes: a reduction over positions keeps channels
            return None  # over every axis, or over the permuted one: nothing permuted remains
        if not all(isinstance(d, int) for d in dims):
            return opaque(node)
        dims = [norm_dim(d, n) for d in dims]
        if v[1] in dims:
            return None  # over the permuted axis: the same for every permutation
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        return v if keep else (v[0], v[1] - sum(d < v[1] for d in dims))

    def reshaped(node: torch.fx.Node, x: object) -> Value:
        v = val(x)
        si, so = shape(x), shapes.get(node.name)
        if v is None:
            return None
        if si is None or not isinstance(so, tuple):
            fix(v)
            return None
        before = math.prod(si[: v[1]])
        for j in range(len(so)):
            if math.prod(so[:j]) == before and so[j] == si[v[1]]:
                return (v[0], j)  # the axis kept whole, with everything before it
        if heads_from(node, v, x):
            return None  # split into attention heads: followed as parts of the space
        fix(v)  # mixed with positions
        return None

    def moved(node: torch.fx.Node, x: object) -> Value:
        v = val(x)
        n = nd(x)
        if v is None:
            return None
        t, a = node.target, v[1]
        args = node.args[1:]
        if n is None:
            return opaque(node)
        if t in ("transpose", "permute") or t in (torch.transpose, torch.permute):
            where_to = moved_to(node, n)
            return opaque(node) if where_to is None else (v[0], where_to[a])
        if t == "unsqueeze" or t is torch.unsqueeze:
            d = norm_dim(int(args[0]), n + 1)  # type: ignore[call-overload]
            return (v[0], a + 1 if d <= a else a)
        if t in ("squeeze",) or t is torch.squeeze:
            sh, so = shape(x), shapes.get(node.name)
            if sh is None or not isinstance(so, tuple):
                return opaque(node)
            return (v[0], a - sum(1 for i in range(a) if sh[i] == 1 and len(so) < len(sh)))
        return opaque(node)

    def flattened(node: torch.fx.Node, x: object, start: object) -> Value:
        v = val(x)
        out = flattened_value(v, shape(x), shapes.get(node.name), start)
        if out is None:
            fix(v)  # channels mixed with positions: not a plain axis permutation
        return out

    def indexed(node: torch.fx.Node, x: torch.fx.Node, index: object) -> Value:
        v = val(x)
        if v is None:
            return None
        n = nd(x)
        idx = list(index) if isinstance(index, tuple) else [index]
        if n is None or any(isinstance(i, torch.fx.Node) for i in idx) or idx.count(...) > 1:
            fix(v)
            return None
        if ... in idx:
            k = idx.index(...)
            idx[k : k + 1] = [slice(None)] * (n - sum(i is not None for i in idx) + 1)
        out_pos = 0
        in_pos = 0
        for i in idx:
            if i is None:
                out_pos += 1
                continue
            if in_pos == v[1]:
                if i == slice(None):
                    return (v[0], out_pos)
                fix(v)  # one channel picked, or a part of them
                return None
            if not isinstance(i, int):
                out_pos += 1
            in_pos += 1
        return (v[0], out_pos + (v[1] - in_pos))

    def concatenated(node: torch.fx.Node) -> Value:
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        d = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        so = shapes.get(node.name)
        if not isinstance(parts, (tuple, list)) or not isinstance(so, tuple) or not isinstance(d, int):
            return opaque(node)
        d = norm_dim(d, len(so))
        spaces = [val(p) for p in parts]
        known = [v for v in spaces if v is not None]
        if not known:
            return opaque(node)
        axis = known[0][1]
        if axis == d or any(v[1] != axis for v in known):
            for v in known:
                fix(v)
            return opaque(node)
        for v in known[1:]:
            uf.union(known[0][0], v[0])
        for p, v in zip(parts, spaces, strict=True):
            if v is not None:
                continue
            sh = shape(p)
            if isinstance(p, torch.fx.Node) and p.name in attr and axis >= attr_off.get(p.name, 0):
                add(known[0][0], attr[p.name], axis - attr_off.get(p.name, 0))
            elif sh is None or sh[axis] != 1:
                fix(known[0])
                return None
        return (known[0][0], axis)

    def attention(node: torch.fx.Node, m: nn.MultiheadAttention) -> None:
        given = list(node.args[:3])
        q, k, vv = given + [node.kwargs.get(n) for n in ("query", "key", "value")[len(given):]]
        vals = [val(a) for a in (q, k, vv)]
        # self-attention: query, key and value in one space (the same value, or one norm's
        # outputs), read by one input projection
        same = m._qkv_same_embed_dim and all(v is not None for v in vals) and len(
            {(uf.find(v[0]), v[1]) for v in vals if v is not None}) == 1  # fmt: skip
        if same and last(q, vals[0]):  # type: ignore[arg-type]
            assert vals[0] is not None
            add(vals[0][0], f"{node.target}.in_proj_weight", 1)
        else:
            for v in vals:
                fix(v)
        per_head = node.kwargs.get("average_attn_weights", True) is False or (
            len(node.args) > 6 and node.args[6] is False)
        if m.bias_k is None and m.bias_v is None and not per_head and node.target not in mha_done:
            # heads as blocks, and units within a head: queries with keys, values with the
            # output projection's inputs (once per module, however often it is called)
            mha_done.add(node.target)
            E, t = m.embed_dim, node.target
            qk: list[Axis] = []
            vo: list[Axis] = []
            if m._qkv_same_embed_dim:
                qk += [(name_of(f"{t}.in_proj_weight"), 0, 0), (name_of(f"{t}.in_proj_weight"), 0, E)]
                vo += [(name_of(f"{t}.in_proj_weight"), 0, 2 * E)]
            else:
                qk += [(name_of(f"{t}.q_proj_weight"), 0, 0), (name_of(f"{t}.k_proj_weight"), 0, 0)]
                vo += [(name_of(f"{t}.v_proj_weight"), 0, 0)]
            if m.in_proj_bias is not None:
                b = name_of(f"{t}.in_proj_bias")
                qk += [(b, 0, 0), (b, 0, E)]
                vo += [(b, 0, 2 * E)]
            vo += [(name_of(f"{t}.out_proj.weight"), 1, 0)]
            heads.append((tuple(qk), tuple(vo), E, m.head_dim))
        s = uf.make()
        add(s, f"{node.target}.out_proj.weight", 0)
        if m.out_proj.bias is not None:
            add(s, f"{node.target}.out_proj.bias", 0)
        out_shape = shapes.get(node.name)
        axis = len(out_shape[0]) - 1 if isinstance(out_shape, list) and out_shape[0] else 2
        seq[node.name] = [(s, axis), None]

    def new_part(space: int, offset: int, n: int, H: int | None = None, d: int | None = None) -> int:
        parts.append({"space": space, "offset": offset, "n": n, "H": H, "d": d, "merged": None,
                      "failed": False})  # fmt: skip
        parted[space].append(len(parts) - 1)
        return len(parts) - 1

    def split_heads(si: tuple[int, ...], so: tuple[int, ...], axis: int) -> tuple[int, int] | None:
        """(j, m): ``axis`` of ``si`` became axes j..j+m-1 of ``so`` (m = 2: heads, units;
        m = 3: packed parts, heads, units), everything else kept."""
        before, after = math.prod(si[:axis]), math.prod(si[axis + 1 :])
        for m in (2, 3):
            for j in range(len(so) - m + 1):
                if (math.prod(so[:j]) == before and math.prod(so[j : j + m]) == si[axis]
                        and math.prod(so[j + m :]) == after and all(x > 1 for x in so[j : j + m])):  # fmt: skip
                    return j, m
        return None

    def heads_from(node: torch.fx.Node, v: Value, x: object) -> bool:
        """A view of a projection's units into heads: record its part(s)."""
        si, so = shape(x), shapes.get(node.name)
        if v is None or si is None or not isinstance(so, tuple):
            return False
        found = split_heads(si, so, v[1])
        if found is None:
            return False
        j, m = found
        if m == 2:
            hv[node.name] = ((new_part(v[0], 0, si[v[1]], so[j], so[j + 1]),), None, j, j + 1)
        else:
            P, H, d = so[j : j + 3]
            pids = tuple(new_part(v[0], i * H * d, H * d, H, d) for i in range(P))
            hv[node.name] = (pids, j, j + 1, j + 2)
        return True

    def part_ids(name: str) -> list[int]:
        if name in pvs:
            return [pvs[name][0]]
        if name in hv:
            return list(hv[name][0])
        if name in sc:
            return list(sc[name][:2])
        if name in hseq:
            return [p for kind, h in hseq[name] for p in ([h[0]] if kind == "p" else h[0])]
        return []

    def scalar(a: object) -> bool:
        return not isinstance(a, torch.fx.Node) or a.name in sizes or not isinstance(
            shapes.get(a.name), tuple) or shapes.get(a.name) == ()  # fmt: skip

    def broadcast_ok(a: object, axis: int, n_out: int) -> bool:
        """Whether tensor ``a`` (a mask) is the same for every head (size 1 or absent there)."""
        sh = shape(a)
        if sh is None:
            return False
        k = n_out - axis  # the head axis counted from the right
        return len(sh) < k or sh[len(sh) - k] == 1

    def moved_axes(node: torch.fx.Node, axes: list[int | None], n: int) -> list[int | None] | None:
        where_to = moved_to(node, n)
        return None if where_to is None else [None if a is None else where_to[a] for a in axes]

    def heads_op(node: torch.fx.Node, a0: object) -> bool:
        """Carry headed values, parts and scores through ``node``; False: not understood."""
        t, method, name = node.target, node.op == "call_method", node.name
        an = a0.name if isinstance(a0, torch.fx.Node) else ""
        so = shapes.get(name)
        n_in = nd(a0)
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, (nn.Dropout, nn.Identity, nn.Softmax)) and an in (hv.keys() | sc.keys()):
                (hv if an in hv else sc)[name] = (hv if an in hv else sc)[an]  # type: ignore[index]
                return True
            return False
        if (method and t in _ELEMENTWISE_METHODS) or (not method and t in _ELEMENTWISE_FUNCS):
            rest = [a for a in nodes_in((node.args[1:], node.kwargs)) if a.name not in sizes]
            if an in sc and (t != "masked_fill" or all(broadcast_ok(a, sc[an][2], nd(node) or 0)
                                                       for a in rest)):  # fmt: skip
                sc[name] = sc[an]
                return True
            if an in hv and not rest:
                hv[name] = hv[an]
                return True
            return False
        if (not method and t in _BINARY_FUNCS) or (method and t in _BINARY_METHODS):
            b = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
            if an in hv and scalar(b):
                hv[name] = hv[an]
                return True
            if isinstance(b, torch.fx.Node) and b.name in hv and scalar(a0) and t in (operator.mul, torch.mul):
                hv[name] = hv[b.name]
                return True
            if an in sc and (scalar(b) or broadcast_ok(b, sc[an][2], nd(node) or 0)):
                sc[name] = sc[an]
                return True
            return False
        if t in ("transpose", "permute") or t in (torch.transpose, torch.permute):
            if n_in is None:
                return False
            if an in hv:
                pids, pa, ha, da = hv[an]
                new = moved_axes(node, [pa, ha, da], n_in)
                if new is None:
                    return False
                hv[name] = (pids, new[0], new[1], new[2])  # type: ignore[assignment]
                return True
            if an in sc:
                new = moved_axes(node, [sc[an][2]], n_in)
                if new is None:
                    return False
                sc[name] = (sc[an][0], sc[an][1], new[0])  # type: ignore[assignment]
                return True
            return False
        if (method and t in ("view", "reshape")) or t is torch.reshape:
            si = shape(a0)
            if si is None or not isinstance(so, tuple):
                return False
            if an in pvs:
                pid, axis = pvs[an]
                found = split_heads(si, so, axis)
                if found is None or found[1] != 2 or parts[pid]["H"] is not None:
                    return False
                j = found[0]
                parts[pid]["H"], parts[pid]["d"] = so[j], so[j + 1]
                hv[name] = ((pid,), None, j, j + 1)
                return True
            if an in hv:
                pids, pa, ha, da = hv[an]
                if pa is not None or da != ha + 1:
                    return False
                part = parts[pids[0]]
                before, after = math.prod(si[:ha]), math.prod(si[da + 1 :])
                for j in range(len(so)):
                    if math.prod(so[:j]) == before and so[j] == part["n"] and math.prod(so[j + 1 :]) == after:
                        if part["merged"] is None:
                            part["merged"] = uf.make()
                        ch[name] = (part["merged"], j)
                        return True
            return False
        if (method and t == "unbind") or t is torch.unbind:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if an not in hv or n_in is None or not isinstance(dim, int):
                return False
            pids, pa, ha, da = hv[an]
            if pa != norm_dim(dim, n_in):
                return False
            shift = [a - (a > pa) for a in (ha, da)]
            hseq[name] = [("h", ((p,), None, shift[0], shift[1])) for p in pids]
            return True
        if t is operator.getitem:
            i = node.args[1]
            if an in hseq and isinstance(i, int):
                kind, h = hseq[an][i]
                (pvs if kind == "p" else hv)[name] = h
                return True
            if an in hv and isinstance(i, int) and hv[an][1] == 0:
                pids, _, ha, da = hv[an]
                hv[name] = ((pids[i],), None, ha - 1, da - 1)
                return True
            return False
        if t in (operator.matmul, torch.matmul) or (method and t == "matmul"):
            b = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
            bn = b.name if isinstance(b, torch.fx.Node) else ""
            n_out = nd(node)
            if n_out is None:
                return False
            if an in hv and bn in hv and len(hv[an][0]) == len(hv[bn][0]) == 1:
                (pq,), _, hq, dq = hv[an]
                (pk,), _, hk, dk = hv[bn]
                if hq == hk and dq == n_out - 1 and dk == n_out - 2:
                    sc[name] = (pq, pk, hq)
                    return True
            if an in sc and bn in hv and len(hv[bn][0]) == 1:
                pq, pk, hs = sc[an]
                (pv,), _, hvv, dv = hv[bn]
                if hs == hvv and dv == n_out - 1:
                    hv[name] = ((pv,), None, hs, dv)
                    links.append((pq, pk, pv))
                    return True
            return False
        if t is F.scaled_dot_product_attention:
            given = list(node.args[:3])
            q, k, vv = given + [node.kwargs.get(n) for n in ("query", "key", "value")[len(given):]]
            names = [a.name if isinstance(a, torch.fx.Node) else "" for a in (q, k, vv)]
            if not all(n in hv and len(hv[n][0]) == 1 for n in names):
                return False
            mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
            if isinstance(mask, torch.fx.Node) and not broadcast_ok(mask, hv[names[0]][2], nd(node) or 0):
                return False  # a mask per head (ALiBi): the heads keep their places
            (pq,), _, hq, dq = hv[names[0]]
            (pk,), _, hk, dk = hv[names[1]]
            (pv,), _, hvv, dv = hv[names[2]]
            if not (hq == hk == hvv and dq == dk == dv):
                return False
            hv[name] = ((pv,), None, hvv, dv)
            links.append((pq, pk, pv))
            return True
        return False

    for node in gm.graph.nodes:
        a0 = node.args[0] if node.args else None
        out: Value = None
        if node.op in ("call_function", "call_method", "call_module"):
            heads_in = [n.name for n in nodes_in((node.args, node.kwargs))
                        if n.name in hv or n.name in pvs or n.name in sc or n.name in hseq]  # fmt: skip
            is_size = (node.op == "call_method" and node.target == "size") or (
                node.target is getattr and node.args[1] in ("shape", "ndim", "dtype", "device"))
            if heads_in and not is_size:
                try:
                    handled = heads_op(node, a0)
                except (KeyError, IndexError, TypeError, ValueError):
                    handled = False  # a form not understood: those heads keep their places
                if handled:
                    continue
                for n in heads_in:
                    for p in part_ids(n):
                        parts[p]["failed"] = True
        if node.op == "placeholder":
            out = None
        elif node.op == "get_attr":
            attr[node.name] = name_of(str(node.target))
        elif node.op == "call_module":
            m = modules[node.target]
            t = node.target
            if isinstance(m, nn.Linear):
                out = weight_layer(node, a0, f"{t}.weight", f"{t}.bias" if m.bias is not None else None, False)
            elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
                out = weight_layer(node, a0, f"{t}.weight", f"{t}.bias" if m.bias is not None else None, True)
            elif isinstance(m, nn.Embedding):
                fix(val(a0))
                s = uf.make()
                add(s, f"{t}.weight", 1)
                out = (s, out_axis(node, False))
            elif isinstance(m, nn.LayerNorm):
                params = [f"{t}.{p}" for p, _ in m.named_parameters(recurse=False)]
                out = norm_over_last(a0, params, len(m.normalized_shape))
            elif isinstance(m, (*NORM_TYPES, nn.modules.batchnorm._NormBase)):
                v = val(a0)
                if v is not None and v[1] == 1:
                    for p, _ in m.named_parameters(recurse=False):
                        add(v[0], f"{t}.{p}", 0)
                    if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                        # per-channel statistics move with their channels (weight matching
                        # reads only the parameters; applying a permutation moves these too)
                        add(v[0], f"{t}.running_mean", 0)
                        add(v[0], f"{t}.running_var", 0)
                    if isinstance(m, nn.GroupNorm) and 1 < m.num_groups < m.num_channels:
                        # statistics per group: groups move as blocks, channels within a group
                        blocks[v[0]].add(m.num_channels // m.num_groups)
                    out = v
                else:
                    out = opaque(node)
            elif isinstance(m, _ELEMENTWISE_MODULES):
                out = val(a0)
            elif isinstance(m, _POOL_MODULES):
                v = val(a0)
                out = v if v is None or v[1] == 1 else opaque(node)
            elif isinstance(m, nn.Flatten):
                out = flattened(node, a0, m.start_dim)
            elif isinstance(m, nn.MultiheadAttention):
                attention(node, m)
            else:
                out = opaque(node)
        elif node.op in ("call_function", "call_method"):
            t = node.target
            method = node.op == "call_method"
            if (method and t == "size") or (t is getattr and node.args[1] == "shape") or (
                t is operator.getitem and isinstance(a0, torch.fx.Node) and a0.name in sizes
            ):  # fmt: skip
                sizes.add(node.name)
            elif t is operator.getitem and isinstance(a0, torch.fx.Node) and a0.name in seq:
                i = node.args[1]
                out = seq[a0.name][i] if isinstance(i, int) and i < len(seq[a0.name]) else None
            elif t is operator.getitem and isinstance(a0, torch.fx.Node):
                out = indexed(node, a0, node.args[1])
            elif (not method and t in _ELEMENTWISE_FUNCS) or (method and t in _ELEMENTWISE_METHODS):
                out = val(a0)
            elif t is F.linear:
                w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
                b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
                if isinstance(w, torch.fx.Node) and w.name in attr and (
                        b is None or (isinstance(b, torch.fx.Node) and b.name in attr)):  # fmt: skip
                    out = weight_layer(node, a0, attr[w.name], None if b is None else attr[b.name], False)
                else:
                    out = opaque(node)
            elif t is F.embedding:
                w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
                if isinstance(w, torch.fx.Node) and w.name in attr:
                    fix(val(a0))
                    s = uf.make()
                    add(s, attr[w.name], 1)
                    out = (s, out_axis(node, False))
                else:
                    out = opaque(node)
            elif t is F.layer_norm:
                shp = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
                k = len(shp) if isinstance(shp, (tuple, list)) else 1
                params = [attr[p.name] for p in nodes_in(node.args[2:4]) + nodes_in(
                    [node.kwargs.get("weight"), node.kwargs.get("bias")]) if p.name in attr]  # fmt: skip
                out = norm_over_last(a0, params, k)
            elif (not method and t in _POOL_FUNCS):
                v = val(a0)
                out = v if v is None or v[1] == 1 else opaque(node)
            elif (not method and t in _BINARY_FUNCS) or (method and t in _BINARY_METHODS):
                b = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
                out = binary(node, a0, b)
            elif (method and t in _REDUCE_METHODS) or (not method and t in _REDUCE_FUNCS):
                out = reduce(node, a0)
            elif (method and t in ("view", "reshape")) or t is torch.reshape:
                out = reshaped(node, a0)
            elif (method and t == "flatten") or t is torch.flatten:
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                out = flattened(node, a0, start)
            elif t in ("transpose", "permute", "unsqueeze", "squeeze") or t in (
                    torch.transpose, torch.permute, torch.unsqueeze, torch.squeeze):  # fmt: skip
                out = moved(node, a0)
            elif (method and t in ("split", "chunk")) or t in (torch.split, torch.chunk):
                v = val(a0)
                d = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
                n, sh = nd(a0), shapes.get(node.name)
                pieces = len(sh) if isinstance(sh, list) else 0
                if v is not None and n is not None and isinstance(d, int) and norm_dim(d, n) != v[1] and pieces:
                    seq[node.name] = [v] * pieces
                elif v is not None and n is not None and isinstance(d, int) and pieces and all(
                        isinstance(p, tuple) for p in sh):  # fmt: skip
                    # along the units (a packed q|k|v projection): each piece is a part
                    offs = [0]
                    for piece in sh[:-1]:
                        offs.append(offs[-1] + piece[v[1]])
                    hseq[node.name] = [("p", (new_part(v[0], o, piece[v[1]]), v[1]))
                                       for o, piece in zip(offs, sh, strict=True)]  # fmt: skip
                    seq[node.name] = [None] * pieces
                else:
                    fix(v)
                    seq[node.name] = [None] * pieces
            elif method and t in ("expand", "expand_as", "repeat") and isinstance(a0, torch.fx.Node):
                n_in, n_out = nd(a0), nd(node)
                off = 0 if n_in is None or n_out is None else n_out - n_in
                if a0.name in attr:  # a parameter broadcast (a class token): still that tensor
                    attr[node.name] = attr[a0.name]
                    attr_off[node.name] = attr_off.get(a0.name, 0) + off
                else:
                    v = val(a0)
                    out = None if v is None else (v[0], v[1] + off)
            elif t in (torch.cat, torch.concat):
                out = concatenated(node)
            elif not nodes_in((node.args, node.kwargs)):
                out = None  # torch.arange(...), torch.zeros(...): made from nothing permuted
            else:
                out = opaque(node)
        elif node.op == "output":
            opaque(node)
            continue
        if out is not None:
            ch[node.name] = out

    fixed_roots = {uf.find(s) for s in fixed}
    merged = {p["merged"] for p in parts if p["merged"] is not None}
    held = {uf.find(s) for s in parted} | {uf.find(s) for s in merged}
    heads.extend(hand_written_heads(parts, parted, links, uf, members, fixed_roots))
    groups: dict[int, list[Axis]] = defaultdict(list)
    for s, axes in members.items():
        root = uf.find(s)
        if root not in fixed_roots and root not in held:  # a part's space: only its heads move
            groups[root].extend(axes)
    groups = {r: axes for r, axes in groups.items()
              if not any(name in fixed_params for name, _ in axes)}  # fmt: skip
    block_of: dict[int, set[int]] = defaultdict(set)
    for space, sizes_ in blocks.items():
        block_of[uf.find(space)] |= sizes_
    # two GroupNorms with other group sizes on one space: it stays in place
    groups = {r: axes for r, axes in groups.items() if len(block_of.get(r, ())) <= 1}
    acts = [
        n.name
        for n in gm.graph.nodes
        if (n.op == "call_function" and n.target in _NONLINEAR_FUNCS)
        or (n.op == "call_method" and n.target in _NONLINEAR_METHODS)
        or (n.op == "call_module" and isinstance(modules[n.target], _NONLINEAR_MODULES))
    ]
    node_group = {name: uf.find(v[0]) for name, v in ch.items() if v is not None}
    node_axis = {name: v[1] for name, v in ch.items() if v is not None}
    heads = [h for h in heads if not any(a[0] in fixed_params for a in h[0] + h[1])]
    group_blocks = {r: next(iter(block_of[r])) for r in groups if block_of.get(r)}
    return GraphAnalysis(gm, dict(groups), node_group, acts, node_axis, heads, group_blocks)


def moved_to(node: torch.fx.Node, n: int) -> list[int] | None:
    """For ``transpose``/``permute`` of an n-axis value (positional or keyword dims): where
    each axis goes; None for a form not understood."""
    t = node.target
    args = list(node.args[1:])
    try:
        if t == "transpose" or t is torch.transpose:
            if len(args) < 2:
                args = [*args, *(node.kwargs[k] for k in ("dim0", "dim1")[len(args):])]
            d0, d1 = (int(d) % n for d in args[:2])  # type: ignore[call-overload]
            return [d1 if a == d0 else d0 if a == d1 else a for a in range(n)]
        if t == "permute" or t is torch.permute:
            dims = args[0] if len(args) == 1 else args if args else node.kwargs["dims"]
            order = [int(d) % n for d in (dims if isinstance(dims, (tuple, list)) else [dims])]  # type: ignore[union-attr]
            if sorted(order) != list(range(n)):
                return None
            return [order.index(a) for a in range(n)]
    except (KeyError, TypeError, ValueError):
        return None
    return None


def hand_written_heads(
    parts: list[dict[str, Any]],
    parted: dict[int, list[int]],
    links: list[tuple[int, int, int]],
    uf: _UnionFind,
    members: dict[int, list[Axis]],
    fixed_roots: set[int],
) -> list[tuple[tuple[Axis, ...], tuple[Axis, ...], int, int]]:
    """The head groups of hand-written attention: a (q, k, v) link counts when each of its
    parts has a head structure, q and k match, v is merged back into a space the output
    projection reads, and every part of each projection it draws from is used by such a link
    (else that projection stays in place)."""
    spaces = list(uf.parent)

    def alone(s: int) -> bool:  # not merged with any other space (no residual add, no tie)
        root = uf.find(s)
        return root not in fixed_roots and all(x == s or uf.find(x) != root for x in spaces)

    used: dict[int, int] = {}
    for q, k, v in links:
        for p in (q, k, v):
            used[p] = used.get(p, 0) + 1
    ok = []
    for q, k, v in links:
        pq, pk, pv = parts[q], parts[k], parts[v]
        fine = all(not p["failed"] and p["H"] is not None and used[i] == 1
                   for i, p in ((q, pq), (k, pk), (v, pv)))  # fmt: skip
        same = pq["H"] == pk["H"] == pv["H"] and pq["d"] == pk["d"] == pv["d"]
        # the merged heads must be read by weights (not viewed into heads again)
        if fine and same and pv["merged"] is not None and alone(pv["merged"]) and pv["merged"] not in parted:
            ok.append((q, k, v))
    merged = {p["merged"] for p in parts if p["merged"] is not None}

    def overlapping(pids: list[int]) -> bool:
        spans = sorted((parts[p]["offset"], parts[p]["offset"] + parts[p]["n"]) for p in pids)
        return any(a[1] > b[0] for a, b in itertools.pairwise(spans))

    while True:  # a projection counts only if all its parts are in counted links
        inside = {p for link in ok for p in link}
        bad = {s for s, pids in parted.items() if not alone(s) or not set(pids) <= inside
               or overlapping(pids) or s in merged}  # fmt: skip
        keep = [link for link in ok if all(parts[p]["space"] not in bad for p in link)]
        if keep == ok:
            break
        ok = keep

    def entries(p: dict[str, Any]) -> list[Axis]:
        return [(name, axis, p["offset"]) for name, axis in members.get(p["space"], [])]

    out = []
    for q, k, v in ok:
        pv = parts[v]
        qk = tuple(entries(parts[q]) + entries(parts[k]))
        vo = tuple(entries(pv) + [(name, axis, 0) for name, axis in members.get(pv["merged"], [])])
        out.append((qk, vo, pv["n"], pv["d"]))
    return out


def flattened_value(v: Value, si: tuple[int, ...] | None, so: object, start: object) -> Value:
    """The permuted axis after ``flatten(start)``: kept if it comes before ``start`` or is the
    only axis of more than one element among the flattened ones; else None (fixed by the
    caller)."""
    if v is None:
        return None
    if si is None or not isinstance(start, int):
        return None if not isinstance(start, int) or 0 <= start < 2 else v
    start = start + len(si) if start < 0 else start
    if v[1] < start:
        return v
    if all(d == 1 for i, d in enumerate(si) if i >= start and i != v[1]):
        return (v[0], start)
    return None
