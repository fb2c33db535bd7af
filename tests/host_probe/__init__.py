"""A test-only ComfyUI node pack: records what the UNet really receives during sampling.

Loaded next to the pack by the host tests only. ``PBETest_CaptureUNetInput`` returns a clone of the MODEL with a
diffusion-model wrapper (the host's own patching API, ``comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL``) that
saves every call's 9-channel input, timestep and context to a safetensors file, then calls the UNet unchanged.
"""

import os

import comfy.patcher_extension
import folder_paths
from comfy_api.latest import ComfyExtension, io
from safetensors.torch import save_file


class CaptureUNetInput(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBETest_CaptureUNetInput",
            category="testing",
            description="Test probe: saves the UNet's inputs during sampling.",
            inputs=[io.Model.Input("model"), io.String.Input("path")],
            outputs=[io.Model.Output()],
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, model, path):
        calls = {}

        def wrapper(executor, x, timesteps, context, *args, **kwargs):
            i = len(calls) // 3
            calls[f"{i:04d}.x"] = x.detach().float().cpu().contiguous()
            calls[f"{i:04d}.t"] = timesteps.detach().float().cpu().contiguous()
            calls[f"{i:04d}.context"] = context.detach().float().cpu().contiguous()
            save_file(dict(calls), path)
            return executor(x, timesteps, context, *args, **kwargs)

        m = model.clone()
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "pbe_test_capture", wrapper)
        return io.NodeOutput(m)


class SaveTensor(io.ComfyNode):
    """Saves an IMAGE or MASK as float32 safetensors in the output folder (PNG would round to 8 bits)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBETest_SaveTensor",
            category="testing",
            description="Test probe: saves a tensor losslessly.",
            inputs=[io.AnyType.Input("value"), io.String.Input("filename")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, value, filename):
        if isinstance(value, dict):  # LATENT
            value = value["samples"]
        path = os.path.join(folder_paths.get_output_directory(), filename)
        save_file({"value": value.detach().float().cpu().contiguous()}, path)
        return io.NodeOutput(ui={"tensors": [{"filename": filename, "subfolder": "", "type": "output"}]})


class ProbeExtension(ComfyExtension):
    async def get_node_list(self):
        return [CaptureUNetInput, SaveTensor]


async def comfy_entrypoint():
    return ProbeExtension()
