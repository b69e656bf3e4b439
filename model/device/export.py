"""Export the device model's single streaming step as an ONNX file, for ONNX Runtime on the device.

The device runs one function per event: ``(event inputs ..., h, c) -> (logits [1, 8], h, c)``, where the event
inputs are whatever ``PreferenceLSTM.step`` takes besides its state, in its own order and under its own parameter
names. Nothing here knows the feature layout: the inputs' names and shapes come from the model itself
(``model.example_step_inputs(1)``, ``model.initial_state(1)``) and the output shapes from one torch step, so the
export follows the model when its features or its step change. ``model.device.runtime.DeviceStep`` runs the file
(why ONNX Runtime: that module's docstring) and refuses a file whose signature is not the model's.

Exporting uses torch's ONNX exporter (``torch.onnx.export(..., dynamo=True)``, which needs ``onnx`` and
``onnxscript``); the device needs neither, nor torch.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.device.runtime import OUTPUT_NAMES, STATE_NAMES, StepSignature
from model.network.networks import PreferenceLSTM

OPSET = 20


class SingleStep(nn.Module):
    """The causal model's ``step`` with plain tensor inputs and outputs, as an exportable module.

    ``forward(*event_inputs, h, c)`` calls ``model.step`` with the event inputs by the names of
    ``model.example_step_inputs`` and ``state=(h, c)``.
    """

    def __init__(self, model: PreferenceLSTM) -> None:
        super().__init__()
        if not model.is_causal:
            raise ValueError("only a causal model (bidirectional=false) has a single-step function to export.")
        self.model = model
        self.input_names = tuple(model.example_step_inputs(1))

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        *event_inputs, h, c = tensors
        logits, (h_next, c_next) = self.model.step(**dict(zip(self.input_names, event_inputs)), state=(h, c))
        return logits, h_next, c_next


def example_inputs(model: PreferenceLSTM) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Zero event inputs and the zero state of ``model``'s step at batch 1."""
    return dict(model.example_step_inputs(1)), model.initial_state(1)


@torch.no_grad()
def step_signature(model: PreferenceLSTM) -> StepSignature:
    """The names and shapes an exported step of ``model`` takes and returns (one torch step finds the outputs)."""
    inputs, (h, c) = example_inputs(model)
    was_training = model.training
    outputs = SingleStep(model.eval())(*inputs.values(), h, c)
    model.train(was_training)
    named = [*inputs.items(), *zip(STATE_NAMES, (h, c))]
    return StepSignature(tuple((name, tuple(t.shape)) for name, t in named),
                         tuple((name, tuple(t.shape)) for name, t in zip(OUTPUT_NAMES, outputs)))


@dataclass(frozen=True)
class ExportedModel:
    """Attributes:
    path: the ``.onnx`` file written (weights included: one file).
    size_bytes: its size on disk.
    signature: the step's input and output names and shapes.
    """

    path: Path
    size_bytes: int
    signature: StepSignature


def export_device_model(model: PreferenceLSTM, path: str | Path) -> ExportedModel:
    """Export ``model``'s single step (evaluation mode, batch 1, float32) to the ONNX file ``path``.

    The caller's model is not changed (a copy is put in evaluation mode and exported).
    """
    student = copy.deepcopy(model).eval()
    step = SingleStep(student).eval()
    inputs, (h, c) = example_inputs(student)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # it lists every torchvision operator it skips registering
    try:
        with warnings.catch_warnings():
            # nn.LSTM re-assigns its flat weight list while tracing; the exported graph reads the parameters directly.
            warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights")
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.onnx.export(step, (*inputs.values(), h, c), str(target), dynamo=True, opset_version=OPSET,
                              input_names=[*inputs, *STATE_NAMES], output_names=list(OUTPUT_NAMES),
                              external_data=False, verbose=False)
    finally:
        onnx_logger.setLevel(level)
    return ExportedModel(target, target.stat().st_size, step_signature(student))


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s weights serialised by ``torch.save`` (what a device downloads)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes
