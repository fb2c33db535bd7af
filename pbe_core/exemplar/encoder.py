"""Paint by Example's exemplar encoder: CLIP ViT class token -> information bottleneck -> one context token.

The paper (Yang et al. 2023, section 3.2) conditions the UNet on a *single* token: the CLIP ViT-L/14 vision tower's
pooled output (the class token after CLIP's post-layernorm, 1024-d, taken *before* CLIP's 768-d visual projection)
goes through a small transformer ("mapper": 5 pre-LN blocks, width 1024, one head, MLP 1024->4096->1024 with exact
GELU), a LayerNorm and a linear ``proj_out`` to the UNet's 768-wide context: shape (B, 1, 768). The unconditional
context is a learned vector of the same shape.

Written for this project; diffusers' ``PaintByExampleImageEncoder`` (Apache-2.0) was read for the structure and is
the test oracle. The module names follow the original single-file layout so the checkpoint loads without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..weights.checkpoint import ModelInfo, PbECheckpoint
from ..weights.module_loading import load_checked


class MapperAttention(nn.Module):
    """Multi-head self-attention with q, k, v stacked in one ``c_qkv`` Linear (rows: q, then k, then v)."""

    def __init__(self, width: int, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.c_qkv = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        if n == 1:
            # One token: the softmax over a single key is exactly 1, so the output is the value projection.
            v = F.linear(x, self.c_qkv.weight[2 * w :], self.c_qkv.bias[2 * w :])
            return self.c_proj(v)
        q, k, v = self.c_qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.c_proj(y.transpose(1, 2).reshape(b, n, w))


class MapperMLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))  # exact (erf) GELU, as the paper's mapper


class MapperBlock(nn.Module):
    """Pre-LN residual block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = MapperAttention(width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MapperMLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Mapper(nn.Module):
    def __init__(self, width: int, depth: int):
        super().__init__()
        self.resblocks = nn.ModuleList(MapperBlock(width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


def clip_vision_config(info: ModelInfo):
    """transformers ``CLIPVisionConfig`` for the inferred sizes (OpenAI CLIP: quick_gelu, LayerNorm eps 1e-5)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=info.clip_width,
        intermediate_size=info.clip_mlp_width,
        num_hidden_layers=info.clip_depth,
        num_attention_heads=info.clip_heads,
        image_size=info.clip_image_size,
        patch_size=info.clip_patch,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=info.context_dim,
    )


class ExemplarHead(nn.Module):
    """The information bottleneck, the trained half of the exemplar encoder: mapper -> final LayerNorm -> ``proj_out``,
    and the learned unconditional vector (docs/design/model.md).

    ``forward(pooled)``: CLIP's pooled class token (B, W) -> context (B, 1, C). Module names are the original
    layout's (``mapper.resblocks.*``, ``final_ln``, ``proj_out``, ``learnable_vector``). Training
    (``pbe_core.train.model``) trains exactly this module.
    """

    def __init__(self, width: int, depth: int, context: int):
        super().__init__()
        self.mapper = Mapper(width, depth)
        self.final_ln = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, context)
        self.learnable_vector = nn.Parameter(torch.randn(1, 1, context))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.final_ln(self.mapper(pooled[:, None])))

    def unconditional(self, batch: int = 1) -> torch.Tensor:
        """The learned unconditional context (the negative for classifier-free guidance), (batch, 1, C)."""
        return self.learnable_vector.expand(batch, -1, -1)


class ExemplarEncoder(ExemplarHead):
    """CLIP vision tower, then the bottleneck (:class:`ExemplarHead`: mapper, final LayerNorm, ``proj_out``, and the
    learned unconditional vector).

    ``forward(pixels)``: pixels (B, 3, S, S) float, CLIP-normalised (S = ``info.clip_image_size``, 224 for the real
    model; see :mod:`pbe_core.exemplar.preprocess`) -> context (B, 1, C), C = ``info.context_dim`` (768).
    """

    def __init__(self, info: ModelInfo):
        super().__init__(info.clip_width, info.mapper_depth, info.context_dim)
        from transformers import CLIPVisionModel

        self.info = info
        self.transformer = CLIPVisionModel(clip_vision_config(info))

    # transformers 4 nests CLIPVisionModel's weights under "vision_model.", transformers 5 does not.
    def _clip_has_vision_model_level(self) -> bool:
        return any(k.startswith("vision_model.") for k in self.transformer.state_dict())

    def _checkpoint_state_dict(self, ckpt: PbECheckpoint) -> dict[str, torch.Tensor]:
        """The checkpoint's encoder tensors under this module's names (whether they fit is checked by loading)."""
        sd = ckpt.encoder_state_dict()
        if not self._clip_has_vision_model_level():
            sd = {k.replace("transformer.vision_model.", "transformer.", 1): v for k, v in sd.items()}
        return sd

    def _load_checked(self, ckpt: PbECheckpoint, prepare=lambda k, v: v) -> None:
        """Load the checkpoint's encoder tensors with ``assign`` (``pbe_core.weights.module_loading.load_checked``): every
        tensor must be used and every weight set, in the shape its layer declares; :class:`CheckpointError`
        otherwise. ``position_ids`` may be absent (a non-persistent buffer in recent transformers, a persistent one
        in old ones)."""
        load_checked(self, self._checkpoint_state_dict(ckpt), "exemplar encoder", ckpt.source, prepare,
                     optional=lambda k: k.endswith("position_ids"))

    def load_checkpoint(self, ckpt: PbECheckpoint) -> ExemplarEncoder:
        """Load the checkpoint's encoder weights, cast to this module's dtype (checked as :meth:`_load_checked`
        says)."""
        dtype = next(self.parameters()).dtype
        self._load_checked(ckpt, lambda k, v: v.to(dtype) if v.is_floating_point() else v)
        return self

    @classmethod
    def from_checkpoint(cls, ckpt: PbECheckpoint, dtype: torch.dtype = torch.float32) -> ExemplarEncoder:
        """The encoder with the checkpoint's tensors *as* its weights (cast to ``dtype`` where they differ).

        Built on the meta device, so no weight memory is allocated before the checkpoint's tensors are adopted; for an
        fp32 ``.safetensors`` file they stay views of the file's copy-on-write memory map (one copy in memory).
        """
        with torch.device("meta"):
            model = cls(ckpt.info)
        model._load_checked(ckpt, lambda k, v: v.to("cpu", dtype) if v.is_floating_point() else v.to("cpu"))
        # buffers the file does not hold (position_ids in transformers 5) are still on the meta device: rebuild them
        for name, buf in list(model.named_buffers()):
            if buf.is_meta:
                owner_name, _, leaf = name.rpartition(".")
                owner = model.get_submodule(owner_name)
                if not leaf.endswith("position_ids"):
                    raise ValueError(f"Exemplar encoder buffer {name} is not in the checkpoint.")
                value = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
                owner.register_buffer(leaf, value, persistent=leaf not in owner._non_persistent_buffers_set)
        meta = [n for n, p in model.named_parameters() if p.is_meta]
        if meta:
            raise ValueError(f"Exemplar encoder weights missing from the checkpoint: {meta[:5]}.")
        return model.eval().requires_grad_(False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.transformer(pixel_values=pixels).pooler_output  # (B, W): post-layernorm class token
        return super().forward(pooled)  # (B, 1, C)
