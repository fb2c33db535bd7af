"""PBE_LoadModel: a Paint-by-Example checkpoint -> MODEL, PBE_ENCODER, VAE."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..pbe_core.weights.checkpoint import load_checkpoint, precheck
from .host.attention_choice import with_sdpa_on_cpu
from .host.encoder import EncoderType
from .host.model_type import WEIGHT_DTYPES, build_all, read_dtypes
from .host.models_folder import FOLDER, list_models, resolve_model
from .host.shared_cfg_prefix import with_shared_cfg_prefix
from .host.single_token_attention import with_single_token_attention

log = logging.getLogger(__name__)


class LoadModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBE_LoadModel",
            display_name="Load Paint-by-Example Model",
            category="paint_by_example",
            description=(
                "Loads a Paint-by-Example checkpoint from models/paint_by_example/: the original model.ckpt (also the "
                "12.6 GB training checkpoint), a .safetensors conversion (fp32/fp16/bf16) or a diffusers folder. "
                "Nothing in the file is executed. Gives the UNet as a MODEL for any sampler, the exemplar encoder "
                "and the VAE."
            ),
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=list_models(),
                    tooltip="A checkpoint file or diffusers folder in ComfyUI/models/paint_by_example/.",
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=list(WEIGHT_DTYPES),
                    default="default",
                    optional=True,
                    tooltip=(
                        "Precision of the model. 'default' lets ComfyUI choose: fp16/bf16 on a GPU, fp32 on the CPU. "
                        "On a CPU, bf16 pays off only with AMX (Intel Xeon 4th generation and later; check with "
                        "`lscpu | grep amx_bf16`): the UNet, VAE and exemplar encoder then compute in bf16, a 512x512 "
                        "edit took 0.37x the fp32 time with 0.53x its memory, and the result moves slightly "
                        "(measured inside the mask: about 1/255 on average, at most 5/255; 50 steps, full-size random "
                        "weights; outside the mask the photo stays exact). On a CPU without AMX, fp32 is the fast "
                        "choice: there bf16 (and fp16 on any CPU, which computes fp16 no faster than fp32) only makes "
                        "the UNet's weights smaller; they are computed in fp32. On a GPU the VAE uses ComfyUI's choice."
                    ),
                ),
                io.Boolean.Input(
                    "single_token_attention",
                    default=True,
                    optional=True,
                    tooltip=(
                        "Fast path: the model's context is one token, so each cross-attention output is the same "
                        "at every pixel and is computed once instead of per pixel. Exact; turn off only to compare."
                    ),
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="MODEL",
                    tooltip="Paint-by-Example UNet (9 input channels, keep-mask polarity) for any ComfyUI sampler.",
                ),
                EncoderType.Output(
                    display_name="PBE_ENCODER",
                    tooltip="Exemplar encoder: CLIP ViT-L/14 class token -> mapper -> one 768-wide context token.",
                ),
                io.Vae.Output(display_name="VAE", tooltip="The model's SD-1 VAE (latent scale 0.18215)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, model_name):
        # Only model_name: the host checks the other widgets itself. Taking model_name turns off the host's check
        # against the listed options, so that a file added since the page was loaded (or a damaged one) gets this
        # pack's own message.
        if not isinstance(model_name, str):
            return f"model_name must be the name of a file or folder in models/{FOLDER}/, not {model_name!r}."
        try:
            # cheap (a few KB read): an HTML page, an empty or unreadable file, a half folder fail here, before the
            # prompt is queued; the rest is checked when the model loads
            precheck(resolve_model(model_name))
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, model_name, weight_dtype="default", single_token_attention=True,
                cpu_channels_last_vae=None) -> io.NodeOutput:
        # cpu_channels_last_vae was a widget of this node; prompts saved with it still reach here (callers of
        # execute) or have it dropped by the host (the prompt's input is no longer in the schema). The loader now
        # chooses the VAE's memory order itself.
        if cpu_channels_last_vae is not None:
            log.debug("Paint by Example: cpu_channels_last_vae=%r is ignored: the VAE's memory order is now chosen "
                      "automatically", cpu_channels_last_vae)
        path = resolve_model(model_name)
        ckpt = load_checkpoint(path, read_dtypes(weight_dtype))  # CheckpointError names the problem and the fix
        log.info("Paint by Example: loaded %s (%s); %s", model_name, ckpt.layout, ckpt.info)
        model, encoder, vae = build_all(ckpt, weight_dtype, channels_last_vae=False)
        del ckpt  # the models hold what they need; the rest of the file's tensors can go
        if single_token_attention:
            model = with_single_token_attention(model)
        model = with_shared_cfg_prefix(model)  # exact, and it checks every call: always on
        model = with_sdpa_on_cpu(model)
        return io.NodeOutput(model, encoder, vae)
