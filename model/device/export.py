"""Export the device model's single streaming step as an ONNX file, for ONNX Runtime on the device.

The device runs one function per event: ``(event inputs ..., h, c) -> (logits [1, 8], h, c)``, where the event
inputs are whatever ``PreferenceLSTM.step`` takes besides its state, in its own order and under its own parameter
names. Nothing here knows the feature layout: the inputs' names and shapes come from the model itself
(``model.example_step_inputs(1)``, ``model.initial_state(1)``) and the output shapes from one torch step, so the
export follows the model when its features or its step change. ``model.device.runtime.DeviceStep`` runs the file
(why ONNX Runtime: that module's docstring) and refuses a file whose signature is not the model's.

Exporting uses torch's ONNX exporter (``torch.onnx.export(..., dynamo=True)``, which needs ``onnx`` and
``onnxscript``); the device needs neither, nor torch.

An export takes 1-4 s, far too long to repeat for every global prior a device receives. The graph of a step depends
only on the architecture, so ``step_graph`` exports it once, unoptimised, with every parameter left as an initializer
named after it (``model.<state_dict key>``), and ``fill_weights`` writes a new prior's weights into a copy of it in
milliseconds (ONNX Runtime folds the constant parts when it loads the file).
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from model.device.runtime import OUTPUT_NAMES, STATE_NAMES, StepSignature
from model.network.networks import PreferenceLSTM

OPSET = 20
PARAMETER_PREFIX = "model."
"""``step_graph``'s initializers are the step module's parameters: ``SingleStep.model``'s, under this prefix."""


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
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _export(student, f=str(target), optimize=True)
    return ExportedModel(target, target.stat().st_size, step_signature(student))


def _export(model: PreferenceLSTM, *, f: str | None, optimize: bool) -> torch.onnx.ONNXProgram:
    """Export ``model``'s single step (evaluation mode, batch 1, float32), to file ``f`` when given."""
    step = SingleStep(model).eval()
    inputs, (h, c) = example_inputs(model)
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # it lists every torchvision operator it skips registering
    try:
        with warnings.catch_warnings():
            # nn.LSTM re-assigns its flat weight list while tracing; the exported graph reads the parameters directly.
            warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights")
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            return torch.onnx.export(step, (*inputs.values(), h, c), f, dynamo=True, opset_version=OPSET,
                                     input_names=[*inputs, *STATE_NAMES], output_names=list(OUTPUT_NAMES),
                                     external_data=False, verbose=False, optimize=optimize)
    finally:
        onnx_logger.setLevel(level)


def step_graph(model: PreferenceLSTM) -> onnx.ModelProto:
    """The ONNX step of ``model``'s architecture, each parameter an initializer named ``PARAMETER_PREFIX + key``
    (filled with ``model``'s weights; ``fill_weights`` puts in others). Exported once per architecture."""
    graph = _export(copy.deepcopy(model).eval(), f=None, optimize=False).model_proto
    names = {init.name for init in graph.graph.initializer}
    missing = sorted(PARAMETER_PREFIX + key for key in model.state_dict() if PARAMETER_PREFIX + key not in names)
    if missing:
        raise ValueError(f"the exported step folded parameters {missing} into constants; fill_weights cannot set them.")
    return graph


def fill_weights(graph: onnx.ModelProto, weights: dict[str, np.ndarray]) -> bytes:
    """``graph`` (from ``step_graph``) with its parameters set to ``weights`` (a state_dict as numpy arrays, float32),
    serialised as an ``.onnx`` file's bytes.

    Raises:
        ValueError: ``weights`` lacks a parameter of the graph, has one the graph lacks, or has another shape (named).
    """
    filled = onnx.ModelProto()
    filled.CopyFrom(graph)
    parameters = {init.name[len(PARAMETER_PREFIX):]: init for init in filled.graph.initializer
                  if init.name.startswith(PARAMETER_PREFIX)}
    if set(parameters) != set(weights):
        raise ValueError(f"weights do not fit the step graph: missing {sorted(set(parameters) - set(weights))}, "
                         f"unexpected {sorted(set(weights) - set(parameters))}.")
    for key, init in parameters.items():
        value = np.ascontiguousarray(weights[key], dtype=np.float32)
        if tuple(value.shape) != tuple(init.dims):
            raise ValueError(f"weight {key!r} has shape {tuple(value.shape)}; the step graph needs {tuple(init.dims)}.")
        init.CopyFrom(numpy_helper.from_array(value, name=init.name))
    return filled.SerializeToString()


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s weights serialised by ``torch.save`` (what a device downloads)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes
