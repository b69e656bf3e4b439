"""Export the device model's single streaming step to a portable file, and load it back.

The device runs one function per event: ``(event features [1, FEATURE_DIM], h, c) -> (logits [1, 8], h, c)``.
It is exported with ``torch.export`` (an ahead-of-time graph of ATen operators plus the weights, saved as a
``.pt2`` archive by ``torch.export.save``; loading runs no pickled code) and runs again through
``torch.export.load(path).module()`` or an ExecuTorch/AOTInductor toolchain.

ONNX would be the other portable format, but ``torch.onnx.export`` (the dynamo exporter of torch 2.x) needs the
``onnx`` and ``onnxscript`` packages, and checking the file needs ``onnxruntime``; none is a dependency of this
project, so ONNX export is not offered here.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.encoding import FEATURE_DIM
from model.networks import PreferenceLSTM

StepFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class SingleStep(nn.Module):
    """The causal model's ``step`` with plain tensor inputs and outputs, as an exportable module."""

    def __init__(self, model: PreferenceLSTM) -> None:
        super().__init__()
        if not model.is_causal:
            raise ValueError("only a causal model (bidirectional=false) has a single-step function to export.")
        self.model = model

    def forward(self, features: torch.Tensor, h: torch.Tensor, c: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, (h_next, c_next) = self.model.step(features, (h, c))
        return logits, h_next, c_next


@dataclass(frozen=True)
class ExportedModel:
    """Attributes:
    path: the ``.pt2`` file written.
    size_bytes: its size on disk.
    """

    path: Path
    size_bytes: int


def export_device_model(model: PreferenceLSTM, path: str | Path) -> ExportedModel:
    """Export ``model``'s single step (evaluation mode, batch 1) with ``torch.export`` to ``path`` (``.pt2``).

    The caller's model is not changed (a copy is put in evaluation mode and exported).
    """
    step = SingleStep(copy.deepcopy(model).eval()).eval()
    h, c = model.initial_state(1)
    example = (torch.zeros(1, FEATURE_DIM), h, c)
    with warnings.catch_warnings():
        # nn.LSTM re-assigns its flat weight list while tracing; the exported graph reads the parameters directly.
        warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights")
        program = torch.export.export(step, example)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, target)
    return ExportedModel(target, target.stat().st_size)


def load_device_model(path: str | Path) -> StepFunction:
    """The exported step function saved at ``path``: ``(features, h, c) -> (logits, h, c)``."""
    return torch.export.load(Path(path)).module()


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s weights serialised by ``torch.save`` (what a device downloads)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes
