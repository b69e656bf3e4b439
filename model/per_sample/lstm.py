"""Exact per-sample gradients of ``nn.LSTM`` (packed-sequence semantics) for DP-SGD.

Opacus refuses ``nn.LSTM`` and its ``DPLSTM`` is a slow, different model. Here each layer is one autograd
``Function`` that runs all directions of the layer together and, in backward, keeps the gradient of the loss with
respect to every pre-activation gate vector. That gradient is per sample, so each weight's per-sample gradient is a
batched matmul of it with the layer's inputs or previous hidden states (Goodfellow 2015, "Efficient Per-Example
Gradient Computations", eq. 2, applied per time step and summed over time).

Forward, per direction and step (the equations of ``torch.nn.LSTM``; gate order i, f, g, o):

    z_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh                         (1)
    i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)                      (2)
    c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)                       (3)

Backward through time (BPTT), with dh_t = dL/dh_t from the outputs plus the recurrence:

    dh_t = dout_t + W_hh^T dz_{t+1}                                       (4)
    dc_t = f_{t+1} * dc_{t+1} + dh_t * o_t * (1 - tanh^2 c_t)             (5)
    dz_i = dc_t * g * i(1-i);  dz_f = dc_t * c_{t-1} * f(1-f)
    dz_g = dc_t * i * (1-g^2); dz_o = dh_t * tanh(c_t) * o(1-o)           (6)
    per sample n:  dW_ih = sum_t dz_t x_t^T;  dW_hh = sum_t dz_t h_{t-1}^T;  db = sum_t dz_t      (7)

Packed semantics without packing: the reverse direction reads each sample's own valid prefix reversed
(``x[n, L_n-1-t]``), so every direction starts at step 0 and sample n is valid for steps ``t < L_n``. Steps past
``L_n`` are computed but never read: outputs there are masked to zero, the final state is taken at step
``L_n - 1``, and since nothing downstream reads them their gate gradients (6) are exactly zero.

Speed: the Python loop over time is the cost, so each step is a handful of in-place ops on preallocated buffers,
all directions batched; everything that is not recurrent (input projection, the coefficients of (5)-(6), the
per-sample matmuls (7)) is done for all steps at once. ``tanh`` is computed as ``2 sigmoid(2x) - 1`` (on this CPU
``tanh`` is 3-4x slower than ``sigmoid``): the g rows of the weights are doubled and the cell is stored doubled.

Over 300 lines on purpose: the forward recurrence, its hand-written backward and the per-sample weight
gradients form one autograd ``Function`` and are checked against each other; they read best side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from model.per_sample.linear import accumulate_grad_sample


@dataclass(frozen=True)
class _Steps:
    """Which time steps of a right-padded batch are real; shared by all layers of one call.

    Attributes:
        lengths: int64 ``[B]``, each in ``1..steps``.
        steps: the longest length; the loop runs this many steps.
        mask: ``[B, steps, 1]`` in the input's dtype, 1 where ``t < lengths[n]``.
        valid: ``mask`` as bool.
        reverse_index: int64 ``[B, steps]``: ``L_n - 1 - t`` where valid, else ``t``. It reverses each sample's
            valid prefix, and is its own inverse.
        batch_index: ``arange(B)``.
    """

    lengths: Tensor
    steps: int
    mask: Tensor
    valid: Tensor
    reverse_index: Tensor
    batch_index: Tensor

    @staticmethod
    def of(lengths: Tensor, dtype: torch.dtype, device: torch.device) -> "_Steps":
        lengths = lengths.to(device=device, dtype=torch.int64)
        steps = int(lengths.max()) if lengths.numel() else 0
        t = torch.arange(steps, device=device)
        valid = (t < lengths[:, None])[..., None]
        reverse_index = torch.where(valid[..., 0], lengths[:, None] - 1 - t, t)
        batch_index = torch.arange(lengths.shape[0], device=device)
        return _Steps(lengths, steps, valid.to(dtype), valid, reverse_index, batch_index)

    def reversed_rows(self, x: Tensor, row_stride: int, offset: int = 0) -> Tensor:
        """Rows ``[B * steps, F]`` of ``x`` (viewed as rows ``n * row_stride + offset + t``), prefixes reversed.

        ``index_select`` of whole rows: about 20x faster than ``gather`` on this CPU.
        """
        rows = (self.batch_index[:, None] * row_stride + offset + self.reverse_index).view(-1)
        return torch.index_select(x.reshape(-1, x.shape[-1]), 0, rows)


def _layer_parameters(lstm: nn.LSTM, layer: int) -> list[nn.Parameter]:
    """The layer's parameters as ``[w_ih, w_hh, (b_ih, b_hh)]`` for each direction, forward direction first."""
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if lstm.bias else [])
    suffixes = [""] + (["_reverse"] if lstm.bidirectional else [])
    return [getattr(lstm, f"{name}_l{layer}{suffix}") for suffix in suffixes for name in names]


def recurrence(z: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run (1)-(3) in place over ``z [D, B, T, 4H]`` (input part of (1), g rows doubled). D is any number of
    independent weight sets: the directions here, the users of ``model.network.batched_model``.

    Returns:
        ``z`` now holding the gates i, f, g, o of (2); the doubled cells ``2 c [D, B, T+1, H]`` (index t+1 is step t,
        index 0 the zero initial state); ``tanh(c) [D, B, T, H]``; and the hidden states ``h [D, B, T+1, H]``,
        laid out like the cells.
    """
    n_dir, batch, n_steps, hidden = z.shape[0], z.shape[1], z.shape[2], w_hh.shape[2]
    h1, h2, h3 = hidden, 2 * hidden, 3 * hidden
    cells = z.new_empty(n_dir, batch, n_steps + 1, hidden)
    tanh_c = z.new_empty(n_dir, batch, n_steps, hidden)
    hs = z.new_empty(n_dir, batch, n_steps + 1, hidden)
    cells[:, :, 0], hs[:, :, 0] = 0.0, 0.0
    w_hh_t = w_hh.transpose(1, 2)
    minus_one = z.new_full((), -1.0)
    z_t, g_t = z.unbind(2), z[..., h2:h3].unbind(2)
    i_t, f_t, o_t = z[..., :h1].unbind(2), z[..., h1:h2].unbind(2), z[..., h3:].unbind(2)
    c_t, tc_t, h_t = cells.unbind(2), tanh_c.unbind(2), hs.unbind(2)
    for t in range(n_steps):
        if t:
            z_t[t].baddbmm_(h_t[t], w_hh_t)  # (1), recurrent part
        z_t[t].sigmoid_()  # (2): i, f, o; and sigmoid(2 z_g)
        torch.add(minus_one, g_t[t], alpha=2, out=g_t[t])  # g = tanh(z_g) = 2 sigmoid(2 z_g) - 1
        torch.mul(f_t[t], c_t[t], out=c_t[t + 1])  # (3), doubled: 2c_t = f * 2c_{t-1} + 2 i g
        c_t[t + 1].addcmul_(i_t[t], g_t[t], value=2)
        torch.sigmoid(c_t[t + 1], out=tc_t[t])  # tanh(c_t) = 2 sigmoid(2 c_t) - 1
        torch.add(minus_one, tc_t[t], alpha=2, out=tc_t[t])
        torch.mul(o_t[t], tc_t[t], out=h_t[t + 1])
    return z, cells, tanh_c, hs


def backward_recurrence(dh: Tensor, gates: Tensor, cells: Tensor, tanh_c: Tensor, w_hh: Tensor) -> Tensor:
    """Run (4)-(6) backwards over time; ``dh [D, B, T, H]`` (output part of (4)) is updated in place.

    Returns:
        ``dz [D, B, T, 4H]``, the per-sample gradient of the loss with respect to the pre-activations (1).
    """
    n_dir, batch, n_steps, hidden = dh.shape
    h1, h2, h3 = hidden, 2 * hidden, 3 * hidden
    i, f, g, o = gates[..., :h1], gates[..., h1:h2], gates[..., h2:h3], gates[..., h3:]
    # Coefficients of (5) and (6) for all steps at once.
    one = gates.new_ones(())
    coef = torch.empty_like(gates)
    torch.mul(g, torch.addcmul(i, i, i, value=-1), out=coef[..., :h1])  # g i(1-i)
    torch.mul(cells[:, :, :n_steps], torch.addcmul(f, f, f, value=-1), out=coef[..., h1:h2])
    coef[..., h1:h2].mul_(0.5)  # c_{t-1} f(1-f); the cells hold 2c
    torch.mul(i, torch.addcmul(one, g, g, value=-1), out=coef[..., h2:h3])  # i(1-g^2)
    torch.mul(tanh_c, torch.addcmul(o, o, o, value=-1), out=coef[..., h3:])  # tanh(c) o(1-o)
    dc_coef = torch.addcmul(one, tanh_c, tanh_c, value=-1).mul_(o)  # o(1-tanh^2 c)

    dz = torch.empty_like(gates)
    dc = dh.new_zeros(n_dir, batch, 1, hidden)
    dh_t, dh4_t = dh.unbind(2), dh.unsqueeze(3).unbind(2)
    f4_t, dcc4_t = f.unsqueeze(3).unbind(2), dc_coef.unsqueeze(3).unbind(2)
    k_ifg_t, k_o_t = coef[..., :h3].unflatten(3, (3, hidden)).unbind(2), coef[..., h3:].unbind(2)
    dz_t, dz_ifg_t, dz_o_t = dz.unbind(2), dz[..., :h3].unflatten(3, (3, hidden)).unbind(2), dz[..., h3:].unbind(2)
    for t in range(n_steps - 1, -1, -1):
        if t < n_steps - 1:
            dh_t[t].baddbmm_(dz_t[t + 1], w_hh)  # (4)
            dc.mul_(f4_t[t + 1])  # (5)
        dc.addcmul_(dh4_t[t], dcc4_t[t])
        torch.mul(k_ifg_t[t], dc, out=dz_ifg_t[t])  # (6)
        torch.mul(k_o_t[t], dh_t[t], out=dz_o_t[t])
    return dz


class _LSTMLayerWithGradSample(torch.autograd.Function):
    """One LSTM layer, all directions at once; returns (output ``[B, T, D*H]``, h_n ``[D, B, H]``)."""

    @staticmethod
    def forward(ctx, x: Tensor, steps: _Steps, n_dir: int, per_sample: bool, params: list[nn.Parameter], *weights: Tensor):
        per_dir = len(weights) // n_dir  # 4 with biases, 2 without
        w_ih = torch.stack(weights[0::per_dir])  # [D, 4H, I]
        w_hh = torch.stack(weights[1::per_dir])  # [D, 4H, H]
        batch, full_steps, inputs = x.shape
        n_steps, hidden = steps.steps, w_hh.shape[2]
        double_g = torch.ones(4 * hidden, dtype=x.dtype, device=x.device)
        double_g[2 * hidden : 3 * hidden] = 2.0  # tanh(z) = 2 sigmoid(2z) - 1

        # Inputs of every direction in its own time order [D, B, T, I]; padding zeroed so that garbage stays finite.
        xs = x.new_empty(n_dir, batch, n_steps, inputs)
        torch.where(steps.valid, x[:, :n_steps], x.new_zeros(()), out=xs[0])
        if n_dir == 2:
            xs[1] = steps.reversed_rows(xs[0], n_steps).view(batch, n_steps, inputs)
        # (1), input part, for all steps in one batched matmul.
        flat, w_ih_t = xs.view(n_dir, batch * n_steps, inputs), (w_ih * double_g[:, None]).transpose(1, 2)
        if per_dir == 4:
            bias = torch.stack([weights[k + 2] + weights[k + 3] for k in range(0, len(weights), per_dir)])
            z = torch.baddbmm((bias * double_g)[:, None, :], flat, w_ih_t)
        else:
            z = torch.bmm(flat, w_ih_t)
        gates, cells, tanh_c, hs = recurrence(z.view(n_dir, batch, n_steps, 4 * hidden), w_hh * double_g[:, None])

        out = x.new_zeros(batch, full_steps, n_dir, hidden)
        torch.mul(hs[0, :, 1:], steps.mask, out=out[:, :n_steps, 0])
        if n_dir == 2:
            reverse = steps.reversed_rows(hs[1], n_steps + 1, offset=1).view(batch, n_steps, hidden)
            torch.mul(reverse, steps.mask, out=out[:, :n_steps, 1])
        h_n = hs[:, steps.batch_index, steps.lengths]  # the state after each sample's last valid step
        ctx.save_for_backward(*weights)
        ctx.saved = (xs, gates, cells, tanh_c, hs, w_ih, w_hh)
        ctx.steps, ctx.params, ctx.per_dir, ctx.full_steps = steps, params, per_dir, full_steps
        ctx.per_sample = per_sample
        ctx.set_materialize_grads(False)
        return out.view(batch, full_steps, n_dir * hidden), h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor | None, grad_h_n: Tensor | None):
        xs, gates, cells, tanh_c, hs, w_ih, w_hh = ctx.saved
        steps: _Steps = ctx.steps
        n_dir, batch, n_steps, inputs = xs.shape
        hidden, full_steps = hs.shape[3], ctx.full_steps

        # dL/dh_t from the outputs and h_n, in each direction's own time order; zero at padded steps.
        dh = xs.new_zeros(n_dir, batch, n_steps, hidden)
        if grad_out is not None:
            grad_out = grad_out.reshape(batch, full_steps, n_dir, hidden)
            torch.mul(grad_out[:, :n_steps, 0], steps.mask, out=dh[0])
            if n_dir == 2:
                reverse = steps.reversed_rows(grad_out.view(batch, full_steps, n_dir * hidden), full_steps)
                torch.mul(reverse[:, hidden:].view(batch, n_steps, hidden), steps.mask, out=dh[1])
        if grad_h_n is not None:
            dh[:, steps.batch_index, steps.lengths - 1] += grad_h_n
        dz = backward_recurrence(dh, gates, cells, tanh_c, w_hh)

        grads = _per_sample_weight_grads(ctx, dz, xs, hs) if ctx.per_sample else _summed_weight_grads(ctx, dz, xs, hs)

        grad_x = None
        if ctx.needs_input_grad[0]:
            dxs = torch.bmm(dz.view(n_dir, batch * n_steps, 4 * hidden), w_ih).view(n_dir, batch, n_steps, inputs)
            grad_x = dxs[0]
            if n_dir == 2:
                grad_x = grad_x + steps.reversed_rows(dxs[1], n_steps).view(batch, n_steps, inputs)
            if full_steps > n_steps:
                grad_x = F.pad(grad_x, (0, 0, 0, full_steps - n_steps))
        return (grad_x, None, None, None, None, *grads)


def _per_sample_weight_grads(ctx, dz: Tensor, xs: Tensor, hs: Tensor) -> list[Tensor | None]:
    """(7): per-sample weight gradients, one batched matmul each over (direction, sample); stored in grad_sample."""
    n_dir, batch, n_steps, inputs = xs.shape
    hidden = hs.shape[3]
    dz_t = dz.view(n_dir * batch, n_steps, 4 * hidden).transpose(1, 2)
    per_ih = torch.bmm(dz_t, xs.view(n_dir * batch, n_steps, inputs)).view(n_dir, batch, 4 * hidden, inputs)
    per_hh = torch.bmm(dz_t, hs[:, :, :n_steps].reshape(n_dir * batch, n_steps, hidden))
    per_hh = per_hh.view(n_dir, batch, 4 * hidden, hidden)
    per_b = dz.sum(2)
    samples = []
    for d in range(n_dir):  # bias_ih and bias_hh get equal values in separate tensors (DPOptimizer needs that)
        samples += [per_ih[d], per_hh[d]] + ([per_b[d], per_b[d].clone()] if ctx.per_dir == 4 else [])
    grads: list[Tensor | None] = []
    for p, sample, needed in zip(ctx.params, samples, ctx.needs_input_grad[5:]):
        if needed:
            accumulate_grad_sample(p, sample)
        grads.append(sample.sum(0) if needed else None)
    return grads


def _summed_weight_grads(ctx, dz: Tensor, xs: Tensor, hs: Tensor) -> list[Tensor | None]:
    """The ordinary (batch-summed) weight gradients: one matmul over all samples and steps per direction."""
    n_dir, batch, n_steps, inputs = xs.shape
    hidden = hs.shape[3]
    dz_t = dz.view(n_dir, batch * n_steps, 4 * hidden).transpose(1, 2)
    g_ih = torch.bmm(dz_t, xs.view(n_dir, batch * n_steps, inputs))
    g_hh = torch.bmm(dz_t, hs[:, :, :n_steps].reshape(n_dir, batch * n_steps, hidden))
    g_b = dz.sum((1, 2))
    grads: list[Tensor | None] = []
    for d in range(n_dir):
        grads += [g_ih[d], g_hh[d]] + ([g_b[d], g_b[d].clone()] if ctx.per_dir == 4 else [])
    return [g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[5:])]


def _dropout(x: Tensor, p: float) -> Tensor:
    """Inverted dropout, the distribution of ``F.dropout(x, p, training=True)``.

    The mask is drawn with ``rand`` rather than ``bernoulli_``, which is 3x slower on this CPU.
    """
    keep = (torch.rand_like(x) >= p).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * keep


def lstm_with_grad_sample(lstm: nn.LSTM, x: Tensor, lengths: Tensor, *, per_sample: bool = True) -> tuple[Tensor, Tensor]:
    """Run ``lstm`` on right-padded ``x`` with packed-sequence semantics; backward also fills ``p.grad_sample``.

    Args:
        lstm: the module whose parameters are used (any ``num_layers``, uni- or bidirectional, with or without
            bias; no ``proj_size``). ``x`` is read batch-first whatever ``lstm.batch_first`` says.
        x: ``[B, T, input_size]``, right-padded; padded entries are ignored (and get zero gradient).
        lengths: int64 ``[B]``, each in ``1..T``.

    Returns:
        ``(output [B, T, D*H], h_n [num_layers*D, B, H])``, equal to ``lstm`` (``batch_first=True``) on
        ``pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)``: output is zero at padded
        steps and ``h_n`` has ``nn.LSTM``'s layout. When ``lstm.training``, dropout is applied to the output of
        every layer but the last, as ``nn.LSTM`` does. On backward every parameter gets ``p.grad`` as usual and
        ``p.grad_sample [B, *p.shape]``: each example's gradient of the loss that was backpropagated (added to a
        ``grad_sample`` of the same batch already present). Backpropagate the *sum* of per-example losses.
        ``B = 0`` is allowed: every ``grad_sample`` is then ``[0, *p.shape]``. With ``per_sample=False`` only
        ``p.grad`` is computed: the same recurrence is the fastest way to *train* this LSTM on CPU without privacy
        (``nn.LSTM``'s packed-sequence backward is slower here; see benchmarks/dp_step.py).
    """
    if lstm.proj_size:
        raise ValueError(f"lstm_with_grad_sample does not support proj_size; found proj_size={lstm.proj_size}.")
    if x.dim() != 3 or x.shape[2] != lstm.input_size:
        raise ValueError(f"x must be [B, T, {lstm.input_size}] (batch first); found shape {tuple(x.shape)}.")
    if lengths.shape != (x.shape[0],):
        raise ValueError(f"lengths must have shape [B] = [{x.shape[0]}]; found {tuple(lengths.shape)}.")
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > x.shape[1]):
        raise ValueError(
            f"lengths must lie in 1..T = 1..{x.shape[1]}; found {int(lengths.min())}..{int(lengths.max())}."
        )
    steps = _Steps.of(lengths, x.dtype, x.device)
    n_dir = 2 if lstm.bidirectional else 1
    layer_input, finals = x, []
    for layer in range(lstm.num_layers):
        if layer and lstm.dropout and lstm.training:
            layer_input = _dropout(layer_input, lstm.dropout)
        params = _layer_parameters(lstm, layer)
        layer_input, h_n = _LSTMLayerWithGradSample.apply(layer_input, steps, n_dir, per_sample, params, *params)
        finals.append(h_n)
    return layer_input, torch.cat(finals, 0)
