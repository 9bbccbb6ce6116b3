"""Helpers for the tools: models from configs or presets and their weights (``config``), the analysis tools' shared
command line (``cli``) and timing (``timing``), FLOP counting (``flops``), images and figures (``visual``), mixed
precision for training (``amp``), and the scan interception (``scan_hooks``) under FLOP counting, activation maps and
ONNX export (``export``)."""
