"""API prompts the host tests send: the one-node edit, the modular graph, and running a prompt that must succeed.

Node ids: ``load`` (PBE_LoadModel), ``src`` and ``ex`` (LoadImage), ``pbe`` (PBE_Sampler) or ``enc``/``cond``/``sample``/
``decode`` (the modular graph), ``save`` (the probe pack's PBETest_SaveTensor: the result as a tensor file).
"""

import uuid

from comfy_host import execution_error


def uid() -> str:
    """A short random name, for an output file no other prompt writes."""
    return uuid.uuid4().hex[:8]


def loader_nodes(layout, exemplar="exemplar.png", source="source.png"):
    """The model loader (``layout``: a fixture file's name) and the source and exemplar images."""
    return {
        "load": {"class_type": "PBE_LoadModel", "inputs": {"model_name": layout}},
        "src": {"class_type": "LoadImage", "inputs": {"image": source}},
        "ex": {"class_type": "LoadImage", "inputs": {"image": exemplar}},
    }


def one_node_prompt(layout, *, steps=10, cfg=5.0, seed=42, sampler="reference", scheduler="normal", feather=0,
                    grow=0, exemplar_link=("ex", 0), save=None, working_size=0, **extra):
    p = loader_nodes(layout)
    p["pbe"] = {
        "class_type": "PBE_Sampler",
        "inputs": {
            "model": ["load", 0], "encoder": ["load", 1], "vae": ["load", 2],
            "image": ["src", 0], "mask": ["src", 1], "exemplar": list(exemplar_link),
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
            "denoise": 1.0, "mask_grow": grow, "mask_feather": feather, "working_size": working_size, **extra,
        },
    }
    p["save"] = {"class_type": "PBETest_SaveTensor", "inputs": {"value": ["pbe", 0], "filename": save or f"{uid()}.st"}}
    return p


def modular_prompt(layout, *, custom=False, scheduler="karras", steps=6, capture=None, save=None, latent="empty"):
    p = loader_nodes(layout)
    p["enc"] = {
        "class_type": "PBE_ExemplarEncode",
        "inputs": {"encoder": ["load", 1], "exemplar": ["ex", 0], "preprocess": "squash"},
    }
    p["cond"] = {
        "class_type": "PBE_InpaintConditioning",
        "inputs": {"positive": ["enc", 0], "negative": ["enc", 1], "vae": ["load", 2], "image": ["src", 0], "mask": ["src", 1],
                   "latent": latent},
    }
    model = ["load", 0]
    if capture:
        p["probe"] = {"class_type": "PBETest_CaptureUNetInput", "inputs": {"model": model, "path": capture}}
        model = ["probe", 0]
    if custom:
        p.update({
            "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}},
            "guider": {"class_type": "CFGGuider", "inputs": {"model": model, "positive": ["cond", 0], "negative": ["cond", 1], "cfg": 5.0}},
            "ksel": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}},
            "sched": {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": scheduler, "steps": steps, "denoise": 1.0}},
            "sample": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["ksel", 0], "sigmas": ["sched", 0], "latent_image": ["cond", 2]}},
        })
    else:
        p["sample"] = {
            "class_type": "KSampler",
            "inputs": {"model": model, "positive": ["cond", 0], "negative": ["cond", 1], "latent_image": ["cond", 2],
                       "seed": 7, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0},
        }
    p["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["load", 2]}}
    p["save"] = {"class_type": "PBETest_SaveTensor", "inputs": {"value": ["decode", 0], "filename": save or f"{uid()}.st"}}
    return p


def run_ok(server, prompt, timeout=600):
    """Run ``prompt`` on ``server`` and return its history entry; fails the test with the execution error."""
    entry = server.run(prompt, timeout)
    assert execution_error(entry) is None, execution_error(entry)
    return entry
