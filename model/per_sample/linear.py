"""Exact per-sample gradients of ``nn.Linear``, and the rule for storing any per-sample gradient.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", Algorithm 1) clips each example's gradient
before summing. For a linear map ``y = x W^T + b`` the gradient of example ``n`` is an outer product,
``dW_n = sum_k g_{n,k}^T x_{n,k}`` and ``db_n = sum_k g_{n,k}`` over the example's positions ``k`` (Goodfellow 2015,
"Efficient Per-Example Gradient Computations", eq. 2), so one batched matmul gives all of them. The result is left
in ``p.grad_sample`` where Opacus' ``DPOptimizer`` reads it, exactly as Opacus' own ``GradSampleModule`` does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F


def accumulate_grad_sample(param: nn.Parameter, grad_sample: Tensor) -> None:
    """Store ``grad_sample`` ``[B, *param.shape]`` in ``param.grad_sample``, adding to one of the same batch.

    A parameter used twice in one forward pass receives the sum, like ``param.grad``. A ``grad_sample`` left over
    from another batch is an error when it can be detected (another batch size, Opacus' list form, or already
    clipped by ``DPOptimizer``): the optimizer's ``zero_grad()`` must clear it between batches, or per-sample
    gradients of different examples would be added together.

    Raises:
        ValueError: ``param.grad_sample`` holds per-sample gradients of another (or an already clipped) batch.
    """
    if not param.requires_grad:
        return
    existing = getattr(param, "grad_sample", None)
    if existing is None:
        param.grad_sample = grad_sample
        return
    # DPOptimizer marks what it has clipped with `_processed`; adding to it would skip Opacus' own check.
    stale = getattr(existing, "_processed", False) or not isinstance(existing, Tensor)
    if stale or existing.shape != grad_sample.shape:
        found = "a clipped batch" if stale else f"shape {tuple(existing.shape)}"
        raise ValueError(
            "p.grad_sample must be cleared between batches (optimizer.zero_grad()); it holds "
            f"{found} but this backward gives shape {tuple(grad_sample.shape)}."
        )
    param.grad_sample = existing + grad_sample


class _LinearWithGradSample(torch.autograd.Function):
    """``F.linear`` whose backward also stores per-sample weight and bias gradients."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: nn.Linear, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.layer = layer
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        layer: nn.Linear = ctx.layer
        batch, positions = x.shape[0], math.prod(x.shape[1:-1])
        # Goodfellow 2015, eq. 2: per-example dW_n = sum_k g_{n,k}^T x_{n,k} over the middle dims k.
        g = grad_out.reshape(batch, positions, weight.shape[0])
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[2]:
            weight_sample = torch.bmm(g.transpose(1, 2), x.reshape(batch, positions, weight.shape[1]))
            accumulate_grad_sample(layer.weight, weight_sample)
            grad_weight = weight_sample.sum(0)
        if layer.bias is not None and ctx.needs_input_grad[3]:
            bias_sample = g.sum(1)
            accumulate_grad_sample(layer.bias, bias_sample)
            grad_bias = bias_sample.sum(0)
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        return grad_x, None, grad_weight, grad_bias


def linear_with_grad_sample(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` for ``x [B, ..., in]``; backward also sets ``p.grad_sample [B, *p.shape]`` for its parameters.

    The per-sample gradient of example ``n`` sums over all middle dimensions of ``x`` (e.g. time steps), and is
    the gradient of the loss that was backpropagated: backpropagate the *sum* of per-example losses for
    ``p.grad_sample[n]`` to be example ``n``'s own gradient. Works for ``B = 0`` (empty Poisson batches).
    """
    if x.dim() < 2:
        raise ValueError(f"x must be [B, ..., in_features] with a batch dimension; found shape {tuple(x.shape)}.")
    return _LinearWithGradSample.apply(x, layer, layer.weight, layer.bias)
