"""Weights: reading checkpoints safely (no plain ``torch.load``), naming their layouts, writing safetensors, and
loading modules from them (memory format, CPU precision, the model folder's listing). Imports nothing else of
``pbe_core``."""
