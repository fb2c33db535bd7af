"""A test-only ComfyUI node pack: records what the UNet really receives during sampling.

Loaded next to the pack by the host tests only. ``PBETest_CaptureUNetInput`` returns a clone of the MODEL with a
diffusion-model wrapper (the host's own patching API, ``comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL``) that
saves every call's 9-channel input, timestep and context to a safetensors file, then calls the UNet unchanged.
``PBETest_LoadTensor`` feeds tensors no image file can hold (NaN pixels, one channel, values 0..255);
``PBETest_ImageDiff`` summarises where two big images differ, so a test need not download 768 MB.
``PBETest_Gate`` holds a prompt until the test lets it go (a row that cannot finish before a signal the test sends).
"""

import os
import time

import comfy.model_management
import comfy.patcher_extension
import folder_paths
import torch
from comfy_api.latest import ComfyExtension, io
from safetensors.torch import load_file, save_file


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


class LoadTensor(io.ComfyNode):
    """Loads ``image`` and ``mask`` from a safetensors file in the input folder, as they are."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBETest_LoadTensor",
            category="testing",
            description="Test probe: loads an IMAGE and a MASK tensor from input/<filename>.",
            inputs=[io.String.Input("filename")],
            outputs=[io.Image.Output(), io.Mask.Output()],
        )

    @classmethod
    def execute(cls, filename):
        tensors = load_file(os.path.join(folder_paths.get_input_directory(), filename))
        return io.NodeOutput(tensors.get("image"), tensors.get("mask"))


class ImageDiff(io.ComfyNode):
    """Saves the shapes of two IMAGEs and the box (y0, x0, y1, x1) of the pixels where their RGB differs (-1s if none;
    a grey image counts as RGB, alpha is ignored)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBETest_ImageDiff",
            category="testing",
            description="Test probe: where do two images differ?",
            inputs=[io.Image.Input("a"), io.Image.Input("b"), io.String.Input("filename")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, a, b, filename):
        out = {"shape_a": torch.tensor(a.shape), "shape_b": torch.tensor(b.shape), "box": torch.full((4,), -1)}
        if a.shape[:3] == b.shape[:3]:
            a3, b3 = (x.expand(*x.shape[:3], 3) if x.shape[-1] == 1 else x[..., :3] for x in (a, b))
            differs = (a3 != b3).any(dim=-1).any(dim=0)
            rows, cols = torch.nonzero(differs.any(dim=1)).flatten(), torch.nonzero(differs.any(dim=0)).flatten()
            if rows.numel():
                out["box"] = torch.tensor([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1])
            out["finite"] = torch.tensor(bool(torch.isfinite(a).all()))
        save_file(out, os.path.join(folder_paths.get_output_directory(), filename))
        return io.NodeOutput(ui={"tensors": [{"filename": filename, "subfolder": "", "type": "output"}]})


class Gate(io.ComfyNode):
    """Passes ``image`` on once the file ``folder/go-<seed>`` exists. It writes ``folder/started-<seed>`` when it
    begins to wait, and ``folder/interrupted-<seed>`` when the prompt is interrupted meanwhile (``POST /interrupt``,
    seen through the host's own check, ``comfy.model_management.throw_exception_if_processing_interrupted``). The
    client's seed override sets ``seed`` on every node that has it, so each row of a batch has its own gate."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBETest_Gate",
            category="testing",
            description="Test probe: holds the prompt until folder/go-<seed> exists.",
            inputs=[io.Image.Input("image"), io.Int.Input("seed", min=0, max=2**63 - 1), io.String.Input("folder")],
            outputs=[io.Image.Output()],
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, image, seed, folder):
        def mark(name):
            with open(os.path.join(folder, f"{name}-{seed}"), "w"):
                pass

        mark("started")
        while not os.path.exists(os.path.join(folder, f"go-{seed}")):
            try:
                comfy.model_management.throw_exception_if_processing_interrupted()
            except comfy.model_management.InterruptProcessingException:
                mark("interrupted")
                raise
            time.sleep(0.02)  # polling the test's file, not ordering anything
        return io.NodeOutput(image)


class ProbeExtension(ComfyExtension):
    async def get_node_list(self):
        return [CaptureUNetInput, SaveTensor, LoadTensor, ImageDiff, Gate]


async def comfy_entrypoint():
    return ProbeExtension()
