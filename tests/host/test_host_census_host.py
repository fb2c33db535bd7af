"""A census of the host: every ComfyUI symbol the pack relies on, checked against the ComfyUI found (``COMFYUI_PATH``).

Modules, functions and classes with the arguments the pack passes them, attributes, the command-line options the
client and the tests start ComfyUI with, the HTTP routes and ``/ws`` messages the client uses, and the core nodes and
inputs the shipped workflows use. Each failure names the symbol, what moved, and the ComfyUI version found; one test
per kind, each listing everything missing at once. docs/design/host.md has the same table with each symbol's state on
ComfyUI 0.3.64 (run here) and in the newest public files (read), and the tests that guard its behaviour.

Keep it in step with the pack: a new host symbol in ``nodes/`` or ``pbe_core/client/`` belongs here and in that table.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from pathlib import Path

import pytest
import workflow_schema as ws
from comfy_inprocess import host_version

from pbe_core.client.errors import ServerError

pytestmark = pytest.mark.host

#: module -> the attributes the pack reads from it
MODULES = {
    "comfy.cli_args": ["args", "parser"],
    "comfy.latent_formats": [],
    "comfy.ldm.models.autoencoder": ["AutoencoderKL"],
    "comfy.ldm.modules.attention": ["attention_pytorch", "optimized_attention"],
    "comfy.model_base": ["BaseModel"],
    "comfy.model_detection": ["detect_unet_config"],
    "comfy.model_management": [
        "get_torch_device", "unet_offload_device", "unet_dtype", "unet_manual_cast", "text_encoder_device",
        "text_encoder_offload_device", "text_encoder_dtype", "vae_device", "vae_dtype", "intermediate_device",
        "load_model_gpu", "load_models_gpu", "get_free_memory",
    ],
    "comfy.model_patcher": ["ModelPatcher"],
    "comfy.sample": ["prepare_noise", "sample_custom"],
    "comfy.samplers": ["KSAMPLER", "KSampler", "sampler_object"],
    "comfy.sd": ["VAE"],
    "comfy.supported_models": ["SD15"],
    "comfy.utils": ["calculate_parameters", "weight_dtype", "resize_to_batch_size", "PROGRESS_BAR_ENABLED"],
    "comfy_api.latest": ["ComfyExtension", "io"],
    "folder_paths": ["models_dir", "folder_names_and_paths", "get_folder_paths"],
    "latent_preview": ["prepare_callback"],
    "node_helpers": ["conditioning_set_values"],
}  # fmt: skip

#: callable -> (number of positional arguments the pack passes, keyword names it passes); where it is called. A
#: class: the arguments of its constructor (without self); a method read from its class: self counts
CALLS = {
    "comfy.model_detection.detect_unet_config": (2, []),  # nodes/host/model_type.py build_model_patcher
    "comfy.model_management.unet_dtype": (0, ["model_params", "supported_dtypes", "weight_dtype"]),
    "comfy.model_management.unet_manual_cast": (3, []),
    "comfy.model_management.text_encoder_dtype": (1, []),  # nodes/host/encoder.py encoder_dtype
    "comfy.model_management.get_free_memory": (1, []),  # nodes/host/sampling.py check_memory
    "comfy.model_management.load_model_gpu": (1, []),
    "comfy.model_management.load_models_gpu": (1, []),
    "comfy.model_patcher.ModelPatcher": (1, ["load_device", "offload_device"]),  # nodes/host/patchers.py
    "comfy.sd.VAE": (0, ["sd", "config", "dtype"]),  # nodes/host/model_type.py build_vae
    "comfy.sd.VAE.encode": (2, []),
    "comfy.sd.VAE.decode": (2, []),
    "comfy.ldm.models.autoencoder.AutoencoderKL": (0, ["embed_dim", "ddconfig"]),
    "comfy.supported_models.SD15": (1, []),
    "comfy.supported_models.SD15.set_inference_dtype": (3, []),  # self, dtype, manual_cast_dtype (+device: newer)
    "comfy.supported_models.SD15.process_unet_state_dict": (2, []),
    "comfy.supported_models.SD15.get_model": (3, []),
    "comfy.model_base.BaseModel": (1, ["model_type", "device"]),  # via PaintByExampleConfig.get_model
    "comfy.model_base.BaseModel.extra_conds": (1, []),
    "comfy.model_base.BaseModel.concat_cond": (1, []),
    "comfy.model_base.BaseModel.process_latent_in": (2, []),
    "comfy.model_patcher.ModelPatcher.clone": (1, []),
    "comfy.model_patcher.ModelPatcher.add_object_patch": (3, []),
    "comfy.samplers.KSampler": (7, []),  # model, steps, device, sampler, scheduler, denoise, model_options
    "comfy.samplers.sampler_object": (1, []),
    "comfy.sample.prepare_noise": (2, []),
    "comfy.sample.sample_custom": (8, ["callback", "disable_pbar", "seed"]),
    "comfy.utils.calculate_parameters": (1, []),
    "comfy.utils.weight_dtype": (1, []),
    "comfy.utils.resize_to_batch_size": (2, []),
    "folder_paths.get_folder_paths": (1, []),
    "latent_preview.prepare_callback": (2, []),
    "node_helpers.conditioning_set_values": (2, []),
}

#: host attributes read on objects: (where, attribute names)
ATTRIBUTES = {
    "comfy.cli_args.args": ["cpu", "fp16_vae", "bf16_vae", "fp32_vae"],
    "comfy.samplers.KSampler": ["SAMPLERS", "SCHEDULERS"],
    "comfy.supported_models.SD15": ["supported_inference_dtypes", "unet_config", "model_type"],
    "comfy_api.latest.io": [
        "ComfyNode", "Schema", "NodeOutput", "Custom", "Boolean", "Combo", "Conditioning", "Float", "Image", "Int",
        "Latent", "Mask", "Model", "Sampler", "Sigmas", "String", "Vae",
    ],
}  # fmt: skip

#: what the VAE object the pack builds must carry (checked on a real comfy.sd.VAE built from the tiny fixture)
VAE_ATTRIBUTES = ["first_stage_model", "vae_dtype", "device", "downscale_ratio", "upscale_ratio", "patcher"]

#: ComfyUI options the client (pbe_core/client/embedded.py, fleet.py) and the test harness start it with
CLI_FLAGS = ["--listen", "--port", "--disable-auto-launch", "--base-directory", "--extra-model-paths-config",
             "--database-url", "--cpu", "--lowvram", "--preview-method"]  # fmt: skip

#: /ws message types the client reads (pbe_core/client/ws.py, jobs.py), looked for in the host's sources
WS_MESSAGES = ["status", "progress", "executing", "execution_error", "execution_interrupted", "execution_success"]


def _report(moved: list[str], what: str) -> None:
    if moved:
        pytest.fail(f"{host_version()} lacks {len(moved)} {what} the pack relies on:\n  " + "\n  ".join(moved))


@pytest.fixture(scope="module")
def comfy_imported():
    """ComfyUI imported in-process without the pack: the census reads the host as it ships."""
    from comfy_inprocess import import_host

    import_host()


def _resolve(dotted: str):
    """The object at ``dotted`` (module path, then attributes); raises LookupError naming the missing part."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise LookupError(f"{'.'.join(parts[:parts.index(attr)])} has no attribute {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise LookupError(f"module {parts[0]!r} cannot be imported")


def test_modules_and_their_attributes(comfy_imported):
    moved = []
    for module, attrs in MODULES.items():
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            moved.append(f"module {module}: cannot be imported ({e})")
            continue
        moved += [f"{module}.{a}: gone" for a in attrs if not hasattr(mod, a)]
    for where, attrs in ATTRIBUTES.items():
        try:
            obj = _resolve(where)
        except LookupError as e:
            moved.append(f"{where}: {e}")
            continue
        moved += [f"{where}.{a}: gone" for a in attrs if not hasattr(obj, a)]
    _report(moved, "modules or attributes")


def test_callables_take_the_arguments_the_pack_passes(comfy_imported):
    moved = []
    for dotted, (positional, keywords) in CALLS.items():
        try:
            fn = _resolve(dotted)
        except LookupError as e:
            moved.append(f"{dotted}: {e}")
            continue
        target = fn.__init__ if inspect.isclass(fn) else fn
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            continue  # a builtin without a signature: nothing to compare
        params = list(sig.parameters.values())
        if inspect.isclass(fn):
            params = params[1:]  # self
        kinds = inspect.Parameter
        varargs = any(p.kind == kinds.VAR_POSITIONAL for p in params)
        varkw = any(p.kind == kinds.VAR_KEYWORD for p in params)
        takes_position = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
        if not varargs and len(takes_position) < positional:
            moved.append(f"{dotted}{sig}: takes {len(takes_position)} positional arguments, the pack passes {positional}")
        names = {p.name for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)}
        missing = [k for k in keywords if k not in names]
        if missing and not varkw:
            moved.append(f"{dotted}{sig}: no keyword {', '.join(missing)}")
        required = [p for p in params[positional:] if p.default is p.empty and p.name not in keywords
                    and p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)]  # fmt: skip
        if required:
            moved.append(f"{dotted}{sig}: now also requires {', '.join(p.name for p in required)}")
    _report(moved, "callables (or their arguments)")


def test_the_vae_object_carries_what_the_pack_reads(comfy_imported, fixture_paths):
    from comfy_inprocess import pack_module

    ckpt = pack_module("pbe_core.weights.checkpoint").load_checkpoint(fixture_paths["original-fp32.safetensors"])
    vae = pack_module("nodes.host.model_type").build_vae(ckpt)
    _report([f"comfy.sd.VAE().{a}: gone" for a in VAE_ATTRIBUTES if not hasattr(vae, a)], "VAE attributes")


def test_command_line_options(comfy_imported):
    import comfy.cli_args

    known = set(comfy.cli_args.parser._option_string_actions)
    _report([f"{flag}: not an option of comfy/cli_args.py" for flag in CLI_FLAGS if flag not in known], "options")


def test_http_routes_the_client_uses(comfy_server):
    """Each route answers as the client expects (a GET route with JSON; a POST route with 400 for an empty body, or
    200), not 404/405."""
    moved = []
    for path in ("/system_stats", "/queue", "/object_info", "/history/00000000-0000-0000-0000-000000000000"):
        try:
            comfy_server.get_json(path)
        except (ServerError, ValueError) as e:
            moved.append(f"GET {path}: {e}")
    for path, body in (("/prompt", b"{}"), ("/interrupt", b"{}"), ("/upload/image", b""), ("/upload/mask", b"")):
        try:
            comfy_server._request(path, body, {"Content-Type": "application/json"})
        except ServerError as e:
            if e.status in (404, 405):
                moved.append(f"POST {path}: HTTP {e.status}")
    try:
        comfy_server._request("/view?filename=none.png&type=output")
    except ServerError as e:
        if e.status == 405:
            moved.append(f"GET /view: HTTP {e.status}")
    _report(moved, "HTTP routes")


def test_ws_messages_the_client_reads():
    root = Path(os.environ["COMFYUI_PATH"])
    text = "".join(p.read_text(errors="replace") for p in (root / "server.py", root / "execution.py", root / "main.py")
                   if p.exists())  # fmt: skip
    moved = [f"/ws message {m!r}: not sent by server.py, execution.py or main.py" for m in WS_MESSAGES
             if f'"{m}"' not in text and f"'{m}'" not in text]  # fmt: skip
    _report(moved, "/ws messages")


def test_core_nodes_and_inputs_of_the_workflows(comfy_server):
    live = comfy_server.object_info()
    moved = []
    for name, path in sorted(ws.api_workflows().items()):
        for node in json.loads(path.read_text()).values():
            kind = node["class_type"]
            if kind.startswith("PBE_"):
                continue
            if kind not in live:
                moved.append(f"{name}: core node {kind} is gone")
                continue
            spec = live[kind]["input"]
            known = {**spec.get("required", {}), **spec.get("optional", {})}
            moved += [f"{name}: {kind} has no input {k!r}" for k in node["inputs"] if k not in known]
            if live[kind].get("deprecated"):
                moved.append(f"{name}: core node {kind} is marked deprecated")
    frontend_only = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # the web UI's own nodes, not the server's
    for name, path in sorted(ws.ui_workflows().items()):
        for node in json.loads(path.read_text()).get("nodes", []):
            if not node["type"].startswith("PBE_") and node["type"] not in {*live, *frontend_only}:
                moved.append(f"{name} (UI): core node {node['type']} is gone")
    _report(moved, "core nodes or inputs")


def test_the_session_server_runs_on_the_machines_device(comfy_server):
    """The GPU in the host's default memory mode where its torch finds one (no --cpu), --cpu only where not."""
    from comfy_host import cuda_available
    from comfy_inprocess import choose_device

    device = choose_device(os.environ.get("PBE_HOST_DEVICE"), cuda_available(comfy_server.python))
    assert ("--cpu" in comfy_server.command()) == (device == "cpu"), comfy_server.command()
    stats = comfy_server.get_json("/system_stats")
    assert {d["type"] for d in stats["devices"]} == {device}, (host_version(), stats["devices"])
