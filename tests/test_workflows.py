"""The shared workflows, checked offline (no ComfyUI): they parse, use only known nodes, set only inputs those nodes
have, link matching types, and the API prompts are what the UI workflows queue.

Known nodes are this pack's (read from ``nodes/*.py``) and the host's in ``tests/data/host_nodes.json`` (a snapshot
of the live ``/object_info`` that ``tests/host/test_workflows_host.py`` keeps honest).
"""

import json
import struct

import pytest
from workflow_schema import (
    FRONTEND_ONLY,
    WORKFLOWS_DIR,
    api_workflows,
    host_schemas,
    pack_schemas,
    ui_to_api,
    ui_workflows,
    widget_slots,
)

UI = ui_workflows()
API = api_workflows()
SCHEMAS = {**host_schemas(), **pack_schemas()}
PACK = set(pack_schemas())

#: what the issue asks for: one-node, modular with the mask editor, high resolution, several exemplars
EXPECTED = {"pbe_one_node_edit", "pbe_modular_graph", "pbe_high_resolution", "pbe_several_exemplars"}


def _load(path):
    return json.loads(path.read_text())


def test_the_four_workflows_exist_in_both_formats():
    assert set(UI) == EXPECTED
    assert set(API) == EXPECTED
    # only UI workflows at the top level (the template browser lists them); nothing else there is JSON
    for path in WORKFLOWS_DIR.glob("*.json"):
        assert "nodes" in _load(path) and "links" in _load(path), path


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_thumbnail_is_a_real_jpeg_next_to_the_workflow(name):
    path = WORKFLOWS_DIR / f"{name}.jpg"
    data = path.read_bytes()
    assert data[:3] == b"\xff\xd8\xff", "not a JPEG"
    w, h = _jpeg_size(data)
    assert w >= 256 and h >= 192, (w, h)
    assert len(data) > 10_000, "suspiciously small (blank?) thumbnail"


def _jpeg_size(data):
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + length
    raise AssertionError("no JPEG frame header")


# --- UI format ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ui_workflow_structure(name):
    ui = _load(UI[name])
    assert ui["version"] >= 0.4
    ids = [n["id"] for n in ui["nodes"]]
    assert len(ids) == len(set(ids))
    assert ui["last_node_id"] >= max(ids)
    assert ui["last_link_id"] >= max(link[0] for link in ui["links"])
    nodes = {n["id"]: n for n in ui["nodes"]}
    for n in ui["nodes"]:
        assert n["type"] in SCHEMAS or n["type"] in FRONTEND_ONLY, f"{name}: unknown node type {n['type']}"
    # every link is [id, from node, from slot, to node, to slot, type], and both ends agree with it
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id, (name, link_id)
        assert out["type"] == kind
        assert SCHEMAS[nodes[src]["type"]]["outputs"][src_slot] == kind, (name, nodes[src]["type"], src_slot)
        spec = {i["name"]: i for i in SCHEMAS[nodes[dst]["type"]]["inputs"]}[inp["name"]]
        assert not spec["widget"], f"{name}: {nodes[dst]['type']}.{inp['name']} is a widget but has a link"
        assert spec["type"] in (kind, "*"), (name, nodes[dst]["type"], inp["name"], spec["type"], kind)
    links = {link[0] for link in ui["links"]}
    for n in ui["nodes"]:
        for inp in n.get("inputs", []):
            assert inp.get("link") is None or inp["link"] in links
        for out in n.get("outputs", []):
            assert all(link in links for link in out.get("links") or [])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ui_widgets_and_inputs_exist_on_their_nodes(name):
    for n in _load(UI[name])["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        schema = SCHEMAS[n["type"]]
        names = {i["name"] for i in schema["inputs"]} | {"upload"}
        for inp in n.get("inputs", []):
            assert inp["name"] in names, f"{name}: {n['type']} has no input {inp['name']}"
        slots = widget_slots(schema)
        values = n.get("widgets_values", [])
        assert len(values) == len(slots), (name, n["type"], values, slots)
        by_name = {i["name"]: i for i in schema["inputs"]}
        for (inp, kind), value in zip(slots, values, strict=True):
            if kind == "value":
                _check_value(f"{name}: {n['type']}.{inp}", by_name[inp], value)
            elif kind == "control":
                assert value in ("fixed", "increment", "decrement", "randomize"), (name, n["type"], value)
        # every required socket is connected
        linked = {i["name"] for i in n.get("inputs", []) if i.get("link") is not None}
        for spec in schema["inputs"]:
            if not spec["widget"] and not spec["optional"]:
                assert spec["name"] in linked, f"{name}: {n['type']}.{spec['name']} is not connected"


def _check_value(where, spec, value):
    kind = spec["type"]
    if kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), (where, value)
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (where, value)
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), (where, value)
    elif kind == "STRING":
        assert isinstance(value, str), (where, value)
    elif kind == "COMBO":
        assert isinstance(value, str), (where, value)
        if spec["options"] is not None:
            assert value in spec["options"], f"{where}: {value!r} is not one of {spec['options']}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_ui_workflow_has_a_note_that_explains_it(name):
    notes = [n for n in _load(UI[name])["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1, name
    text = notes[0]["widgets_values"][0]
    assert len(text) > 300
    # what it does, which file it needs and where that goes
    assert "models/paint_by_example/" in text and "model.ckpt" in text
    assert "MaskEditor" in text


# --- API format --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_api_prompt_inputs_exist_and_links_match(name):
    prompt = _load(API[name])
    for node_id, node in prompt.items():
        schema = SCHEMAS[node["class_type"]]  # KeyError: unknown node type
        by_name = {i["name"]: i for i in schema["inputs"]}
        for inp, value in node["inputs"].items():
            assert inp in by_name, f"{name}: {node['class_type']} has no input {inp}"
            spec = by_name[inp]
            if isinstance(value, list):
                src, slot = value
                assert not spec["widget"], (name, node_id, inp)
                src_type = SCHEMAS[prompt[src]["class_type"]]["outputs"][slot]
                assert spec["type"] in (src_type, "*"), (name, node_id, inp, spec["type"], src_type)
            else:
                assert spec["widget"], f"{name}: {node['class_type']}.{inp} needs a link, not {value!r}"
                _check_value(f"{name}: {node['class_type']}.{inp}", spec, value)
        for spec in schema["inputs"]:
            if not spec["optional"]:
                assert spec["name"] in node["inputs"], f"{name}: {node['class_type']} misses {spec['name']}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_api_prompt_is_what_the_ui_workflow_queues(name):
    expected = ui_to_api(_load(UI[name]), SCHEMAS)
    actual = _load(API[name])
    assert set(actual) == set(expected)
    for node_id, node in actual.items():
        assert node["class_type"] == expected[node_id]["class_type"], (name, node_id)
        assert node["inputs"] == expected[node_id]["inputs"], (name, node_id)
        if expected[node_id]["_meta"]["title"] != node["class_type"]:  # a title the UI set
            assert node["_meta"]["title"] == expected[node_id]["_meta"]["title"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_api_prompt_has_what_the_headless_client_fills_in(name):
    """The client's contract: LoadImage nodes titled Source / Exemplar (2, 3, ...), the mask from the source's alpha,
    a PBE_LoadModel whose file it can override, and a SaveImage to download."""
    prompt = _load(API[name])
    titles = {n["_meta"]["title"]: (i, n) for i, n in prompt.items()}
    src_id, src = titles["Source"]
    assert src["class_type"] == "LoadImage"
    assert titles["Exemplar"][1]["class_type"] == "LoadImage"
    masks = [v for n in prompt.values() for k, v in n["inputs"].items() if k == "mask"]
    assert masks and all(m == [src_id, 1] for m in masks)
    assert any(n["class_type"] == "PBE_LoadModel" for n in prompt.values())
    assert any(n["class_type"] == "SaveImage" for n in prompt.values())
    assert any(n["class_type"] in PACK for n in prompt.values())
