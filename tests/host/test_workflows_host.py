"""The shared workflows on a live headless ComfyUI: templates served, UI graphs valid for the live /object_info, every
API workflow runs on the tiny fixture weights; and the offline test's snapshot of host nodes is up to date."""

import io
import json
import os
import urllib.parse
import uuid

import numpy as np
import pytest
import workflow_schema as ws
from comfy_host import PACK_NAME, execution_error
from images import make_photo, png_bytes

pytestmark = pytest.mark.host

NAMES = sorted(ws.ui_workflows())


def _live(comfy_server):
    return ws.object_info_schemas(comfy_server.object_info())


def test_host_node_snapshot_is_up_to_date(comfy_server):
    """tests/support/data/host_nodes.json (what the offline test checks against) equals the live host's schemas."""
    live = ws.host_snapshot(comfy_server.object_info(), comfy_server.get_json("/system_stats"))
    if os.environ.get("PBE_UPDATE_HOST_SNAPSHOT") == "1":
        ws.write_host_snapshot(live)
    stored = json.loads(ws.HOST_SNAPSHOT.read_text())
    assert stored["nodes"] == live["nodes"], (
        "tests/support/data/host_nodes.json is out of date for this ComfyUI; rerun with PBE_UPDATE_HOST_SNAPSHOT=1"
    )


def test_offline_pack_schemas_match_the_live_nodes(comfy_server):
    """What the offline test reads from nodes/*.py is what the host registers."""
    live = _live(comfy_server)
    for node_id, schema in ws.pack_schemas().items():
        assert node_id in live, node_id
        assert schema["outputs"] == live[node_id]["outputs"], node_id
        assert schema["output_names"] == live[node_id]["output_names"], node_id
        keys = ("name", "type", "optional", "widget", "control_after_generate")
        assert [{k: i[k] for k in keys} for i in schema["inputs"]] == [
            {k: i[k] for k in keys} for i in live[node_id]["inputs"]
        ], node_id
        for mine, theirs in zip(schema["inputs"], live[node_id]["inputs"], strict=True):
            if mine["options"] is not None:
                assert mine["options"] == theirs["options"], (node_id, mine["name"])


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_matches_live_object_info(comfy_server, name):
    live = _live(comfy_server)
    ui = json.loads(ws.ui_workflows()[name].read_text())
    nodes = {n["id"]: n for n in ui["nodes"]}
    for n in ui["nodes"]:
        if n["type"] in ws.FRONTEND_ONLY:
            continue
        assert n["type"] in live, f"{name}: {n['type']} is not a node of this ComfyUI"
        schema = live[n["type"]]
        assert len(n.get("widgets_values", [])) == len(ws.widget_slots(schema)), (name, n["type"])
        assert [o["type"] for o in n.get("outputs", [])] == schema["outputs"], (name, n["type"])
    for _, src, src_slot, dst, dst_slot, kind in ui["links"]:
        assert live[nodes[src]["type"]]["outputs"][src_slot] == kind
        inp = nodes[dst]["inputs"][dst_slot]["name"]
        spec = {i["name"]: i for i in live[nodes[dst]["type"]]["inputs"]}[inp]
        assert spec["type"] in (kind, "*") and not spec["widget"], (name, nodes[dst]["type"], inp)
    # and the API prompt converted from it is exactly the committed one
    api = json.loads(ws.api_workflows()[name].read_text())
    converted = ws.ui_to_api(ui, live)
    assert {k: (v["class_type"], v["inputs"]) for k, v in converted.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in api.items()
    }


def test_templates_are_listed_and_served(comfy_server):
    """The template browser's routes (app/custom_node_manager.py): /workflow_templates lists the top-level JSON files
    of the pack's workflows/ folder (not api/) by their names, the templates' titles; /api/workflow_templates/<pack>/
    <file> serves them, as the frontend asks for them (it does not escape the name; the browser encodes the spaces),
    and the thumbnails (newer hosts serve only the .json: the templates do not need them)."""
    listed = comfy_server.get_json("/workflow_templates")
    assert sorted(listed[PACK_NAME]) == sorted(p.stem for p in ws.ui_workflows().values())
    for path in ws.ui_workflows().values():
        url = f"/api/workflow_templates/{PACK_NAME}/{urllib.parse.quote(path.stem)}"
        assert json.loads(comfy_server._request(url + ".json")) == json.loads(path.read_text())
        assert comfy_server._request(url + ".jpg") == path.with_suffix(".jpg").read_bytes()


def test_a_prompt_saved_with_the_former_loader_switch_still_runs(comfy_server):
    """cpu_channels_last_vae was a widget of the loader: prompts saved with it (pbe_core/eval/official_workflow.json
    has it) pass validation and load; the host drops an input the node no longer declares."""
    prompt = json.loads(ws.api_workflows()["pbe_modular_graph"].read_text())
    loader = next(n for n in prompt.values() if n["class_type"] == "PBE_LoadModel")
    loader["inputs"].update(model_name="original.ckpt", cpu_channels_last_vae=True)
    loader_id = next(i for i, n in prompt.items() if n is loader)
    # only the loader, through a node that needs its outputs: VAE Decode of an empty latent
    latent = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    decode = {"class_type": "VAEDecode", "inputs": {"samples": ["900", 0], "vae": [loader_id, 2]}}
    save = {"class_type": "SaveImage", "inputs": {"images": ["901", 0], "filename_prefix": "wf_former_switch"}}
    entry = comfy_server.run({loader_id: loader, "900": latent, "901": decode, "902": save})
    assert execution_error(entry) is None, execution_error(entry)


# --- every API workflow runs ------------------------------------------------------------------------------------------
def _upload_rgba(server, name, h, w, box, seed):
    """A photo whose alpha is 0 inside ``box`` (y0, y1, x0, x1): what the mask editor leaves on a LoadImage."""
    alpha = np.full((h, w), 255, np.uint8)
    y0, y1, x0, x1 = box
    alpha[y0:y1, x0:x1] = 0
    server.upload(name, png_bytes(np.dstack([make_photo(h, w, seed), alpha])))
    return name


def _fill(prompt, title, image):
    ids = [i for i, n in prompt.items() if n["_meta"]["title"] == title]
    assert len(ids) == 1, title
    prompt[ids[0]]["inputs"]["image"] = image


#: per workflow: source size, region, and the tiny-model settings (sides multiples of 64, few steps)
CASES = {
    "pbe_one_node_edit": dict(size=(128, 128), box=(32, 96, 40, 88), working_size=0),
    "pbe_modular_graph": dict(size=(128, 128), box=(32, 96, 40, 88)),
    "pbe_high_resolution": dict(size=(256, 384), box=(120, 152, 200, 248), working_size=64),
    "pbe_several_exemplars": dict(size=(128, 128), box=(32, 96, 40, 88), working_size=0),
}


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_runs_on_the_tiny_model(comfy_server, name):
    from PIL import Image

    case = CASES[name]
    h, w = case["size"]
    prompt = json.loads(ws.api_workflows()[name].read_text())
    tag = uuid.uuid4().hex[:8]
    _fill(prompt, "Source", _upload_rgba(comfy_server, f"wf-src-{tag}.png", h, w, case["box"], 0))
    n_exemplars = 0
    for k, title in enumerate(("Exemplar", "Exemplar 2", "Exemplar 3")):
        if any(n["_meta"]["title"] == title for n in prompt.values()):
            exemplar = f"wf-ex{k}-{tag}.png"
            comfy_server.upload(exemplar, png_bytes(make_photo(224, 160 + 32 * k, 10 + k)))
            _fill(prompt, title, exemplar)
            n_exemplars += 1
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "PBE_LoadModel":
            inputs["model_name"] = "original.ckpt"
        if "steps" in inputs:
            inputs["steps"] = 2
        if "working_size" in inputs and "working_size" in case:
            inputs["working_size"] = case["working_size"]
        if node["class_type"] == "SaveImage":
            inputs["filename_prefix"] = f"wf_{name}_{tag}"
    entry = comfy_server.run(prompt)
    assert execution_error(entry) is None, execution_error(entry)
    images = [img for out in entry["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    assert len(images) == n_exemplars  # one result per exemplar
    for img in images:
        result = Image.open(io.BytesIO(comfy_server.view(img["filename"], img["subfolder"], img["type"])))
        assert result.size == (w, h), (name, result.size)
