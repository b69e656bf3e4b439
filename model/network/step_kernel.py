"""The causal model's single step as a few plain tensor operations, for per-event streaming.

``nn.LSTM``'s module path (argument checks, flat-weight handling, a sequence loop of length one) costs about
0.2-0.3 ms per call for the 32-unit device model on one CPU thread, most of the per-event budget. The same
arithmetic as one ``torch.lstm_cell`` per layer between the style embedding and the head costs about 0.05 ms.
``StepKernel`` is that arithmetic, in evaluation mode (no dropout), reading the model's own parameters, and equal
to the module path up to float rounding (checked in ``tests/test_streaming.py`` and ``tests/test_networks.py``).
``PreferenceLSTM.step`` runs it whenever nothing needs the module path (evaluation mode, no autograd).
"""

from __future__ import annotations

import operator
import weakref
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from model.features.encoding import GENRE_SLOTS
from model.features.heuristic_prior import prior_logits

if TYPE_CHECKING:  # model.network.networks imports this module
    from model.network.networks import LSTMState, PreferenceLSTM


class StepKernel:
    """``(features [B, FEATURE_DIM], (h, c)) -> (logits [B, 8], (h, c))`` of a causal ``PreferenceLSTM``.

    States have the model's shape ``[num_layers, B, hidden_size]``, so the kernel and ``model.step`` can continue
    each other's states. The kernel holds references to the model's parameters: after loading new weights into the
    same model, build a new kernel (and a new fingerprint) anyway, since cached states are then stale.
    """

    def __init__(self, model: PreferenceLSTM) -> None:
        if not model.is_causal:
            raise ValueError("StepKernel needs a causal model (bidirectional=false); found a bidirectional one.")
        lstm = model.lstm
        layers = [
            (getattr(lstm, f"weight_ih_l{k}"), getattr(lstm, f"weight_hh_l{k}"),
             getattr(lstm, f"bias_ih_l{k}", None), getattr(lstm, f"bias_hh_l{k}", None))
            for k in range(lstm.num_layers)
        ]
        self._style = model.style_embedding.weight.detach()
        self._layers = [tuple(None if tensor is None else tensor.detach() for tensor in layer) for layer in layers]
        self._head_weight = model.head.weight.detach()
        self._head_bias = model.head.bias.detach()
        self._residual = model.config.residual
        self._sources = (model.style_embedding.weight, *(p for layer in layers for p in layer if p is not None),
                         model.head.weight, model.head.bias)  # the parameters read, in nn.LSTM's _flat_weights order
        self._addresses = tuple(p.data_ptr() for p in self._sources)

    def reads(self, model: PreferenceLSTM) -> bool:
        """Whether this kernel still reads ``model``'s current parameters: the same tensors, at the same memory.

        Loading weights in place (``load_state_dict``) keeps a kernel valid; replacing a parameter or its data
        (``model.to(...)``, ``load_state_dict(assign=True)``, a new submodule) does not. Checks only an ``nn.LSTM``
        (whose ``_flat_weights`` lists its parameters in this kernel's order); for any other LSTM module, False.
        """
        flat = getattr(model.lstm, "_flat_weights", None)
        if flat is None:
            return False
        now = (model.style_embedding.weight, *flat, model.head.weight, model.head.bias)
        return (len(now) == len(self._sources) and all(map(operator.is_, now, self._sources))
                and tuple(map(torch.Tensor.data_ptr, now)) == self._addresses)

    def __call__(self, features: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        h, c = state
        with torch.no_grad():
            layer_input = torch.cat([F.linear(features[:, :GENRE_SLOTS], self._style), features[:, GENRE_SLOTS:]], -1)
            new_h, new_c = [], []
            for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(self._layers):
                h_k, c_k = torch.lstm_cell(layer_input, (h[k], c[k]), w_ih, w_hh, b_ih, b_hh)
                new_h.append(h_k)
                new_c.append(c_k)
                layer_input = h_k
            if self._residual:
                logits = F.linear(torch.cat([layer_input, features], -1), self._head_weight, self._head_bias)
                logits = logits + prior_logits(features)
            else:
                logits = F.linear(layer_input, self._head_weight, self._head_bias)
        return logits, (torch.stack(new_h), torch.stack(new_c))


_KERNELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def kernel_for(model: PreferenceLSTM) -> StepKernel:
    """``model``'s step kernel, kept per model and rebuilt when it no longer reads the model's parameters."""
    kernel = _KERNELS.get(model)
    if kernel is None or not kernel.reads(model):
        kernel = _KERNELS[model] = StepKernel(model)
    return kernel
