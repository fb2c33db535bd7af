"""The ``PBE_ENCODER`` socket type and its value: the exemplar encoder as the host runs it, with its cache.

The encoder itself (CLIP vision tower -> class token -> mapper -> LayerNorm -> ``proj_out``) is
``pbe_core.exemplar.encoder``; here it is wrapped in a host ``ModelPatcher`` so that ComfyUI's model management places
and offloads it like any other model, and it remembers its recent encodings.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict

import comfy.model_management
import torch
from comfy_api.latest import io

from ...pbe_core.exemplar.encoder import ExemplarEncoder
from ...pbe_core.exemplar.preprocess import MASK_MARKS, PREPROCESS_MODES, object_mask, prepare_exemplars
from ...pbe_core.photo import inputs, mask_ops
from ...pbe_core.weights.checkpoint import PbECheckpoint
from ...pbe_core.weights.cpu_precision import cpu_computes_natively
from .patchers import patcher_class

log = logging.getLogger(__name__)

#: the socket type between 'Load Paint-by-Example Model' and the nodes that encode exemplars
EncoderType = io.Custom("PBE_ENCODER")

#: exemplar encodings each PBE_ENCODER remembers (a few KB each: one 768-wide token per exemplar)
ENCODE_CACHE_SIZE = 8


def _pixels_key(pixels: torch.Tensor) -> tuple:
    """Exact identity of a batch of preprocessed exemplar pixels: shape, dtype and a digest of the values."""
    data = pixels.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(data.view(torch.uint8).numpy().tobytes(), digest_size=32).hexdigest()
    return tuple(data.shape), str(data.dtype), digest


def encoder_dtype(weight_dtype: torch.dtype | None, device: torch.device) -> torch.dtype:
    """The exemplar encoder's dtype for the loader's ``weight_dtype`` (None: "default") on ``device``.

    Default: fp32 on the CPU (fp16 there is slow and inexact), the host's text-encoder dtype on an accelerator. A
    chosen precision as it is, except on a CPU that does not compute it natively (``pbe_core.weights.cpu_precision``: bf16
    without AMX-BF16, fp16 on every CPU): fp32 there, because the encoder runs in plain torch, without the host's
    per-layer casting that lets the UNet keep such weights and compute in fp32.
    """
    cpu = torch.device(device).type == "cpu"
    if weight_dtype is None:
        return torch.float32 if cpu else comfy.model_management.text_encoder_dtype(device)
    if cpu and not cpu_computes_natively(weight_dtype):
        return torch.float32
    return weight_dtype



class PbEEncoder:
    """The ``PBE_ENCODER`` value: the exemplar encoder, placed and offloaded by the host's model management."""

    def __init__(self, ckpt: PbECheckpoint, weight_dtype: torch.dtype | None):
        self.info = ckpt.info
        self.source = ckpt.source
        self.load_device = comfy.model_management.text_encoder_device()
        offload_device = comfy.model_management.text_encoder_offload_device()
        weight_dtype = encoder_dtype(weight_dtype, self.load_device)
        self.dtype = weight_dtype
        self.model = ExemplarEncoder.from_checkpoint(ckpt, dtype=weight_dtype).to(offload_device)
        self.patcher = patcher_class()(self.model, load_device=self.load_device, offload_device=offload_device)
        # encodings of recent exemplars: lives and dies with this encoder (weights never change under it)
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised pixels (B, 3, S, S) -> context (B, 1, C) float32 on the intermediate device.

        Remembers the last few results (keyed on the exact pixel values): the one-node sampler runs again when only
        the seed changes, and the exemplar is then not encoded again (the modular graph gets the same from the
        host's own cache of PBE_ExemplarEncode's output).
        """
        key = _pixels_key(pixels)
        out = self._cache.get(key)
        if out is None:
            log.info("Paint by Example: encoding %d exemplar(s)", pixels.shape[0])
            comfy.model_management.load_model_gpu(self.patcher)
            out = self.model(pixels.to(self.load_device, self.dtype)).float()
            out = out.to(comfy.model_management.intermediate_device())
            self._cache[key] = out
            while len(self._cache) > ENCODE_CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            log.debug("Paint by Example: %d exemplar(s) already encoded", pixels.shape[0])
            self._cache.move_to_end(key)
        return out.clone()

    @torch.no_grad()
    def unconditional(self, batch: int) -> torch.Tensor:
        """The learned unconditional context, (batch, 1, C) float32."""
        return self.model.unconditional(batch).float().to(comfy.model_management.intermediate_device()).clone()


def encode_exemplars(encoder, image, mask=None, preprocess="squash", crop_padding=10, mask_marks="auto"):
    """Exemplar IMAGE (B, H, W, C) (+ MASK of the object or of its background, see ``mask_marks``) ->
    (cond (B, 1, C), uncond (B, 1, C)), float32. The entry of every exemplar: its inputs are checked here."""
    image = inputs.check_image(image, "Exemplar image")
    inputs.check_choice("preprocess", preprocess, PREPROCESS_MODES)
    inputs.check_choice("exemplar_mask_marks", mask_marks, MASK_MARKS)
    if mask is not None and mask_ops.is_placeholder_mask(mask, tuple(image.shape[1:3])):
        mask = None  # LoadImage's stand-in for "no alpha": use the whole exemplar
    if mask is not None:
        mask = object_mask(inputs.check_mask_values(mask, "Exemplar mask"), mask_marks)
    pixels = prepare_exemplars(image, mask, preprocess, encoder.info.clip_image_size, crop_padding)
    cond = encoder.encode(pixels)
    return cond, encoder.unconditional(cond.shape[0])
