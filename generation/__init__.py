"""Music generation through ACE-Step 1.5's pipeline code (diffusers' ``AceStepPipeline``), never downloading.

Importing this package turns the Hugging Face libraries' offline mode on before any of them loads: every pipeline
is read from a local folder (``local_files_only=True`` as well), so nothing here reaches a model hub.

* ``settings``: the ``generation`` config group (simulated, the tiny pipeline, or real weights from a folder).
* ``pipeline_folder``: what a diffusers-format ACE-Step 1.5 folder must hold, checked before anything starts.
* ``pipeline_call``: our request -> the pipeline's keyword arguments (the adapter).
* ``acestep_pipeline``: load a pipeline folder; a generator that writes each piece as a WAV on the device.
* ``tiny_pipeline``: a random-weight pipeline built from code, for tests and the closed-loop experiment.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
