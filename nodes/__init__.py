"""The pack's ComfyUI nodes (V3 schema). Thin glue: host objects in, ``pbe_core`` calls, host objects out."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .conditioning import ExemplarEncode, InpaintConditioning
from .host.models_folder import register_model_folder
from .loader import LoadModel
from .photo_tools import NODES as PHOTO_TOOLS
from .sampler import ReferenceScheduler, Sampler, SamplerSelect

register_model_folder()

NODES: list[type[io.ComfyNode]] = [LoadModel, ExemplarEncode, InpaintConditioning, Sampler, SamplerSelect, ReferenceScheduler, *PHOTO_TOOLS]


class PaintByExampleExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
