"""A hand-batched MLP: forward and backward of P members at once with ``baddbmm``.

For small MLPs the per-step cost of ``vmap(grad(...))`` is dominated by framework overhead;
writing the forward pass and its gradient by hand as one batched matrix product per layer is
several times faster (see ``benchmarks/sweep_speed.py``). The maths is that of
:class:`butterfly.models.MLP` with mean cross-entropy:

    z_l = h_{l-1} W_l^T + b_l,   h_l = relu(z_l),   logits = h_L W_out^T + b_out
    dlogits = (softmax(logits) - onehot(y)) / B
    dW_l = dz_l^T h_{l-1},  db_l = sum_b dz_l,  dh_{l-1} = dz_l W_l,  dz_l = dh_l * [h_l > 0]

Every operation is a per-member batched matrix product, an element-wise op or a reduction
within one member, so a member's numbers never depend on the other members.

The step's intermediates (pre-activations, back-propagated errors) are written into buffers
kept from one step to the next (``out=``, in place): the same kernels, so bit-identical
numbers, without allocating (and first touching) a few MB per step: the gradient took 0.74 to
0.83 of its time at the default sweep's mean population of 49 (``benchmarks/step_profile.py``
times both side by side).
"""

from __future__ import annotations

import torch

from butterfly.models import MLP

Tensors = dict[str, torch.Tensor]
_relu_backward = torch.ops.aten.threshold_backward  # grad where out > 0, else 0


class BatchedMLP:
    """Gradients and losses of a population of :class:`MLP` s sharing one batch."""

    def __init__(self, model: MLP):
        n = len(model.hidden)
        self.layers = [(f"hidden.{i}.weight", f"hidden.{i}.bias") for i in range(n)]
        self.layers.append(("out.weight", "out.bias"))
        self._buffers: dict[tuple, torch.Tensor] = {}  # the step's intermediates, reused

    def _buffer(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A buffer for one intermediate of the step, kept per shape (populations of a few sizes
        may train in turn; a population's size changes only when members join or leave)."""
        key = (name, shape, like.dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None:
            if len(self._buffers) >= 64:  # sizes long gone
                self._buffers.clear()
            buf = self._buffers[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        return type(model) is MLP

    def forward(self, params: Tensors, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[P, B, C]`` of every member on the shared inputs ``x``."""
        P = params[self.layers[0][0]].shape[0]
        h = x.flatten(1).expand(P, -1, -1)
        for i, (w, b) in enumerate(self.layers):
            h = torch.baddbmm(params[b].unsqueeze(1), h, params[w].transpose(1, 2))
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h

    @torch.no_grad()
    def grad_and_loss(
        self, params: Tensors, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[Tensors, torch.Tensor]:
        P = params[self.layers[0][0]].shape[0]
        B = x.shape[0]
        acts = [x.flatten(1).expand(P, -1, -1)]  # inputs to each layer
        for i, (w, b) in enumerate(self.layers):
            z = torch.baddbmm(params[b].unsqueeze(1), acts[-1], params[w].transpose(1, 2),
                              out=self._buffer(f"z{i}", (P, B, params[w].shape[1]), params[w]))  # fmt: skip
            if i < len(self.layers) - 1:
                acts.append(z.relu_())  # in place: the backward pass needs only relu(z) > 0
            else:
                logits = z
        logp = torch.log_softmax(logits, dim=-1)
        idx = y.view(1, B, 1).expand(P, B, 1)
        losses = -logp.gather(-1, idx).squeeze(-1).mean(-1)
        g = logp.exp_()
        g.scatter_add_(-1, idx, torch.full((P, B, 1), -1.0, dtype=g.dtype, device=g.device))
        g.div_(B)
        grads: Tensors = {}
        for i in range(len(self.layers) - 1, -1, -1):
            w, b = self.layers[i]
            grads[w] = torch.bmm(g.transpose(1, 2), acts[i])
            grads[b] = g.sum(1)
            if i > 0:
                # relu's backward as autograd computes it: one fused kernel (a float-by-bool
                # mask product was a third of the step), bit-identical, in place
                d = torch.bmm(g, params[w], out=self._buffer(f"d{i}", tuple(acts[i].shape), g))
                g = _relu_backward.grad_input(d, acts[i], 0.0, grad_input=d)
        return grads, losses
