"""What a diffusers-format ACE-Step 1.5 folder must hold, checked from the files alone (no diffusers import).

A pipeline folder (what ``AceStepPipeline.save_pretrained`` writes, and what ACE-Step 1.5's diffusers checkpoints
are) has a ``model_index.json`` naming the pipeline class and one sub-folder per component. Loading an incomplete
folder would make diffusers look for the missing files on a model hub; this project never downloads, so the folder
is checked first and every missing part is named at once.
"""

from __future__ import annotations

import json
from pathlib import Path

PIPELINE_CLASS = "AceStepPipeline"
MODEL_COMPONENTS = ("transformer", "condition_encoder", "vae", "text_encoder")
"""Components with weights: a config.json and a weights file (safetensors or bin, possibly sharded)."""
PIPELINE_COMPONENTS = (*MODEL_COMPONENTS, "tokenizer", "scheduler")
CONFIG_FILES = {"scheduler": ("scheduler_config.json",), "tokenizer": ("tokenizer.json", "tokenizer_config.json")}
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def _component_gaps(folder: Path, name: str) -> list[str]:
    sub = folder / name
    if not sub.is_dir():
        return [f"{name}/ (no such folder)"]
    gaps = []
    configs = CONFIG_FILES.get(name, ("config.json",))
    if not any((sub / config).is_file() for config in configs):
        gaps.append(f"{name}/{' or '.join(configs)}")
    if name in MODEL_COMPONENTS and not any(any(sub.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        gaps.append(f"{name}/ weights (*.safetensors or *.bin)")
    return gaps


def missing_parts(folder: str | Path) -> list[str]:
    """Every absent part of an ACE-Step 1.5 pipeline folder, as paths relative to ``folder`` (empty: complete)."""
    root = Path(folder)
    if not root.is_dir():
        return [f"{root} (no such folder)"]
    index_path = root / "model_index.json"
    if not index_path.is_file():
        return ["model_index.json", *(gap for name in PIPELINE_COMPONENTS for gap in _component_gaps(root, name))]
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return [f"model_index.json (not JSON: {error})"]
    gaps = []
    if index.get("_class_name") != PIPELINE_CLASS:
        gaps.append(f"model_index.json _class_name {PIPELINE_CLASS!r} (found {index.get('_class_name')!r})")
    for name in PIPELINE_COMPONENTS:
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and all(entry)):
            gaps.append(f"model_index.json entry {name!r}")
        gaps += _component_gaps(root, name)
    return gaps
