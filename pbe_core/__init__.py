"""pbe_core: Paint by Example's engine, host-free.

Imports only torch, safetensors, transformers, einops and numpy, never ``comfy``; the headless client
(the ``client`` subpackage) uses only the standard library. Everything here
works on plain CPU tensors and is what ``nodes/`` translates ComfyUI objects to and from.
Internal imports are relative, so the package works both as ``pbe_core`` (tests, ``python -m``)
and as a sub-package of the custom-node folder ComfyUI loads.
"""

__version__ = "0.1.0"
