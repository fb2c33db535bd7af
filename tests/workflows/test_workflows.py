"""The shared workflows, checked offline (no ComfyUI): they parse, use only known nodes, set only inputs those nodes
have, link matching types, and the API prompts are what the UI workflows queue.

Known nodes are this pack's (read from ``nodes/*.py``) and the host's in ``tests/support/data/host_nodes.json`` (a
snapshot of the live ``/object_info`` that ``tests/host/test_workflows_host.py`` keeps honest).
"""

import ast
import itertools
import json
import struct

import pytest
from workflow_schema import (
    FRONTEND_ONLY,
    REPO,
    WORKFLOWS_DIR,
    api_workflows,
    host_schemas,
    pack_schemas,
    template_titles,
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
    path = UI[name].with_suffix(".jpg")
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


# --- the template browser -----------------------------------------------------------------------------------------------
def test_templates_are_titled_and_ordered_by_their_file_names():
    """The browser shows a pack's template by its file name (title; description = the name with '-' and '_' as
    spaces) and newer hosts list the files sorted by name: the names are the titles, one-node edit first."""
    titles = template_titles()
    assert {path.stem for path in UI.values()} == set(titles.values())
    listed = sorted(titles.values())
    assert listed[0] == titles["pbe_one_node_edit"]
    assert [titles[n] for n in ("pbe_one_node_edit", "pbe_modular_graph", "pbe_high_resolution",
                                "pbe_several_exemplars")] == listed
    for title in listed:
        assert title.startswith("Paint by Example ") and title[0].isupper()
        # safe in every file system and in the template URL the frontend builds (it does not escape them)
        assert not set(title) & set('<>:"/\\|?*#%&'), title


def _models_folder():
    """``FOLDER`` of nodes/host/models_folder.py (the folder the loader lists), read without importing ComfyUI."""
    tree = ast.parse((REPO / "nodes" / "host" / "models_folder.py").read_text())
    return next(
        s.value.value for s in tree.body
        if isinstance(s, ast.Assign) and any(getattr(t, "id", None) == "FOLDER" for t in s.targets)
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ui_workflow_names_the_model_its_folder_and_where_to_get_it(name):
    """What the frontend's missing-model check reads: the loader's ``properties.models`` (an entry whose name is the
    widget's value) and the workflow's ``models`` list, each with the model folder and a download URL."""
    ui = _load(UI[name])
    folder = _models_folder()
    loaders = [n for n in ui["nodes"] if n["type"] == "PBE_LoadModel"]
    assert loaders
    for node in loaders:
        chosen = node["widgets_values"][0]
        entries = [m for m in node["properties"]["models"] if m["name"] == chosen]
        assert entries, f"{name}: the loader's model {chosen!r} has no properties.models entry"
        assert set(entries[0]) == {"name", "url", "directory"}
        assert entries[0]["directory"] == folder
        assert entries[0]["url"] == f"https://huggingface.co/Fantasy-Studio/Paint-by-Example/resolve/main/{chosen}"
    assert ui["models"] == [entries[0]]


#: The frontend's node geometry (ComfyUI 0.3.64's frontend, litegraph): the title bar is NODE_TITLE_HEIGHT = 30 px
#: above ``pos``; node badges are drawn above the title bar (2 px gap, 20 px high); a title gets the node's width less
#: one title height on each side, and is cut ("Batch Ima...") beyond that; its font is NODE_TEXT_SIZE 14 px
#: NODE_FONT Arial.
TITLE_HEIGHT, BADGE, FONT_PX = 30, 2 + 20, 14
#: Arial's advance widths in 1/1000 em (the same as Helvetica's; Liberation Sans, Chromium's Arial on Linux, has the
#: same metrics). Without kerning the sum is an upper bound of what the canvas measures (e.g. 'VA').
ARIAL = {
    " ": 278, "!": 278, '"': 355, "#": 556, "$": 556, "%": 889, "&": 667, "'": 191, "(": 333, ")": 333, "*": 389,
    "+": 584, ",": 278, "-": 333, ".": 278, "/": 278, ":": 278, ";": 278, "<": 584, "=": 584, ">": 584, "?": 556,
    "@": 1015, "[": 278, "\\": 278, "]": 278, "^": 469, "_": 556, "`": 333, "{": 334, "|": 260, "}": 334, "~": 584,
    **dict.fromkeys("0123456789", 556),
    **dict(zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", (667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,
                                              667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611), strict=True)),
    **dict(zip("abcdefghijklmnopqrstuvwxyz", (556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,
                                              556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500), strict=True)),
}
#: pixels beside a title kept free, for fonts a little wider than Arial
TITLE_SLACK = 6
#: the window a template opens in (a 1280 x 800 screen less the frontend's menus), for the view stored in the file
OPEN_VIEW = (1280, 720)


def title_width(title: str) -> float:
    return sum(ARIAL[c] for c in title) * FONT_PX / 1000


def node_boxes(name):
    """``{node id: (title, x0, y0, x1, y1)}``: each node's box on the canvas with its title bar and badges. Titles
    the UI file does not store are the node's display name, which the API prompt built from /object_info keeps."""
    ui, api = _load(UI[name]), _load(API[name])
    boxes = {}
    for n in ui["nodes"]:
        title = n.get("title") or api[str(n["id"])]["_meta"]["title"]
        (x, y), (w, h) = n["pos"], n["size"]
        above = TITLE_HEIGHT + (0 if n["type"] in FRONTEND_ONLY else BADGE)
        boxes[n["id"]] = (title, x, y - above, x + w, y + h)
    return boxes


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_no_two_nodes_overlap(name):
    boxes = node_boxes(name)
    for (ta, *ba), (tb, *bb) in itertools.combinations(boxes.values(), 2):
        apart = ba[2] <= bb[0] or bb[2] <= ba[0] or ba[3] <= bb[1] or bb[3] <= ba[1]
        assert apart, f"{name}: {ta!r} {ba} overlaps {tb!r} {bb}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_title_fits_its_node(name):
    for n in _load(UI[name])["nodes"]:
        title, x0, _, x1, _ = node_boxes(name)[n["id"]]
        need = title_width(title) + 2 * TITLE_HEIGHT + TITLE_SLACK
        assert x1 - x0 >= need, f"{name}: {title!r} needs {need:.0f} px, the node is {x1 - x0:.0f} px wide"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_template_opens_with_every_node_in_view(name):
    """The frontend restores the view stored in ``extra.ds`` (screen = (canvas + offset) x scale)."""
    ds = _load(UI[name])["extra"]["ds"]
    s, (ox, oy) = ds["scale"], ds["offset"]
    assert 0.4 <= s <= 1.2, s  # readable
    for title, x0, y0, x1, y1 in node_boxes(name).values():
        sx0, sy0, sx1, sy1 = ((x0 + ox) * s, (y0 + oy) * s, (x1 + ox) * s, (y1 + oy) * s)
        assert 0 <= sx0 and sx1 <= OPEN_VIEW[0] and 0 <= sy0 and sy1 <= OPEN_VIEW[1], (name, title)


def test_title_metrics_are_arials():
    """The stated widths against two the build measured in Chromium's canvas (tools/build_workflows.py logs them):
    'Load Paint-by-Example Model' 187.5 px, 'Paint-by-Example Inpaint Conditioning' 238.1 px at 14 px."""
    assert title_width("Load Paint-by-Example Model") == pytest.approx(187.5, abs=0.1)
    assert title_width("Paint-by-Example Inpaint Conditioning") == pytest.approx(238.1, abs=0.1)
