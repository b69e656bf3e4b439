"""On-device inference: streaming predictions, their saved state, ONNX export and runtime."""
