"""Node schemas for checking workflow files without ComfyUI, and the UI -> API conversion the frontend does.

A schema is ``{node type: {"inputs": [input, ...], "outputs": [type, ...], "output_names": [name, ...]}}`` with each
input ``{"name", "type", "optional", "widget", "control_after_generate", "upload_widget", "options"}`` in the host's
``input_order`` (required, then optional). Three sources give the same shape:

* :func:`pack_schemas` reads this pack's ``nodes/*.py`` with ``ast`` (the modules import ``comfy``, so CI cannot
  import them): node ids, inputs in order, their types, flags and the option lists that are literal or come from
  ``pbe_core``. Options computed by the host (model files, samplers) are ``None`` there: unchecked offline.
* :func:`object_info_schemas` converts a live ``/object_info`` (host tests).
* ``tests/support/data/host_nodes.json``: the host's nodes that the workflows use, written from a live ``/object_info``
  by ``tests/host/test_workflows_host.py``, which also fails when the snapshot is out of date.
"""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NODES_DIR = REPO / "nodes"
HOST_SNAPSHOT = Path(__file__).resolve().parent / "data" / "host_nodes.json"

#: node types that live only in the frontend: never in /object_info, never in an API prompt
FRONTEND_ONLY = {"Note", "MarkdownNote"}
#: socket types the frontend turns into widgets (a list of options is a COMBO too)
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
#: the V3 ``io`` classes the pack uses, by their host type name
IO_TYPES = {
    "Int": "INT", "Float": "FLOAT", "String": "STRING", "Boolean": "BOOLEAN", "Combo": "COMBO",
    "Model": "MODEL", "Vae": "VAE", "Image": "IMAGE", "Mask": "MASK", "Conditioning": "CONDITIONING",
    "Latent": "LATENT", "Clip": "CLIP", "ClipVision": "CLIP_VISION", "Sampler": "SAMPLER", "Sigmas": "SIGMAS",
}


# --- the pack's own schemas, read from its source -----------------------------------------------------------------------
def pack_schemas(nodes_dir: Path = NODES_DIR) -> dict[str, dict]:
    trees = {p: ast.parse(p.read_text(), str(p)) for p in sorted(nodes_dir.glob("*.py"))}
    custom = {}  # module-level ``Name = io.Custom("TYPE")``, in the node modules or the host plumbing below them
    for tree in [*trees.values(), *(ast.parse(p.read_text(), str(p)) for p in sorted(nodes_dir.glob("*/*.py")))]:
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and _is_io_call(stmt.value, "Custom"):
                for target in stmt.targets:
                    if isinstance(target, ast.Name):
                        custom[target.id] = stmt.value.args[0].value
    schemas = {}
    for path, tree in trees.items():
        imports = _imported_names(tree)
        for cls in (s for s in tree.body if isinstance(s, ast.ClassDef)):
            call = next((n for n in ast.walk(cls) if _is_io_call(n, "Schema")), None)
            if call is None:
                continue
            kw = {k.arg: k.value for k in call.keywords}
            node_id = kw["node_id"].value
            inputs = [_input(c, custom, imports, f"{path.name}:{node_id}") for c in kw["inputs"].elts]
            inputs = [i for i in inputs if not i["optional"]] + [i for i in inputs if i["optional"]]
            outputs = [_socket_type(c.func.value, custom) for c in kw["outputs"].elts]
            names = [_kwargs(c).get("display_name", t) for c, t in zip(kw["outputs"].elts, outputs, strict=True)]
            schemas[node_id] = {"inputs": inputs, "outputs": outputs, "output_names": names}
    return schemas


def _is_io_call(node, attr) -> bool:
    f = getattr(node, "func", None)
    return isinstance(node, ast.Call) and isinstance(f, ast.Attribute) and f.attr == attr and (
        isinstance(f.value, ast.Name) and f.value.id == "io"
    )


def _imported_names(tree) -> dict[str, str]:
    """``{name: module}`` for ``from ..pbe_core.mod import name`` (importable without ComfyUI)."""
    out = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.module.startswith("pbe_core"):
            for alias in stmt.names:
                out[alias.asname or alias.name] = stmt.module
    return out


def _socket_type(expr, custom) -> str:
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "io":
        return IO_TYPES[expr.attr]
    if isinstance(expr, ast.Name) and expr.id in custom:
        return custom[expr.id]
    raise ValueError(f"unknown socket class {ast.unparse(expr)}")


def _kwargs(call) -> dict:
    out = {}
    for k in call.keywords:
        try:
            out[k.arg] = ast.literal_eval(k.value)
        except ValueError:
            out[k.arg] = k.value  # an expression: resolved by the caller where it can be
    return out


def _options(expr, imports):
    """A combo's options when they are literal or a ``pbe_core`` constant (``list(NAME)``); None otherwise."""
    if isinstance(expr, list):
        return expr
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in ("list", "tuple"):
        expr = expr.args[0]
    if isinstance(expr, ast.Name) and expr.id in imports:
        return list(getattr(importlib.import_module(imports[expr.id]), expr.id))
    return None


def _input(call, custom, imports, where) -> dict:
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "Input"):
        raise ValueError(f"{where}: unexpected input {ast.unparse(call)}")
    kind = _socket_type(call.func.value, custom)
    kw = _kwargs(call)
    spec = {
        "name": call.args[0].value,
        "type": kind,
        "optional": bool(kw.get("optional", False)),
        "widget": kind in WIDGET_TYPES and not kw.get("force_input", False),
        "control_after_generate": bool(kw.get("control_after_generate", False)),
        "upload_widget": False,
        "options": _options(kw.get("options"), imports) if kind == "COMBO" else None,
    }
    if "default" in kw and not isinstance(kw["default"], ast.AST):
        spec["default"] = kw["default"]
    return spec


# --- a live /object_info -----------------------------------------------------------------------------------------------
def object_info_schemas(info: dict, types=None) -> dict[str, dict]:
    """The same shape from ``/object_info`` (all node types, or only ``types``)."""
    out = {}
    for name in sorted(types if types is not None else info):
        node = info[name]
        inputs = []
        for group in ("required", "optional"):
            for inp in node.get("input_order", {}).get(group, []):
                kind, opts = (node["input"][group][inp] + [{}])[:2]
                options = None
                if isinstance(kind, list):
                    kind, options = "COMBO", kind
                elif kind == "COMBO":
                    options = opts.get("options")
                upload = bool(opts.get("image_upload") or opts.get("video_upload") or opts.get("audio_upload"))
                spec = {
                    "name": inp,
                    "type": kind,
                    "optional": group == "optional",
                    "widget": kind in WIDGET_TYPES and not opts.get("forceInput", False),
                    "control_after_generate": bool(opts.get("control_after_generate", False))
                    or (kind == "INT" and inp in ("seed", "noise_seed")),
                    "upload_widget": upload,
                    # an upload combo lists the server's files: not part of the node's schema
                    "options": None if upload else options,
                }
                if "default" in opts:
                    spec["default"] = opts["default"]
                inputs.append(spec)
        out[name] = {"inputs": inputs, "outputs": list(node["output"]), "output_names": list(node["output_name"])}
    return out


def host_schemas(path: Path = HOST_SNAPSHOT) -> dict[str, dict]:
    return json.loads(path.read_text())["nodes"]


# --- workflows ---------------------------------------------------------------------------------------------------------
def widget_slots(schema: dict) -> list[tuple[str | None, str]]:
    """The entries of a UI node's ``widgets_values``, in order: ``(input name, kind)`` with kind ``value``,
    ``control`` (the 'control after generate' choice after a seed) or ``upload`` (the image upload button)."""
    slots = []
    for inp in schema["inputs"]:
        if not inp["widget"]:
            continue
        slots.append((inp["name"], "value"))
        if inp["control_after_generate"]:
            slots.append((inp["name"], "control"))
        if inp["upload_widget"]:
            slots.append((None, "upload"))
    return slots


def ui_to_api(ui: dict, schemas: dict[str, dict]) -> dict:
    """A UI workflow as the API prompt the frontend would queue (frontend-only nodes dropped, titles in ``_meta``)."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):  # notes, muted, bypassed
            continue
        schema = schemas[node["type"]]
        values = dict(_widget_values(node, schema))
        inputs = {}
        for inp in schema["inputs"]:
            slot = next((i for i in node.get("inputs", []) if i["name"] == inp["name"]), None)
            if slot is not None and slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[inp["name"]] = [str(link[1]), link[2]]
            elif inp["name"] in values:
                inputs[inp["name"]] = values[inp["name"]]
        prompt[str(node["id"])] = {
            "inputs": inputs,
            "class_type": node["type"],
            "_meta": {"title": node.get("title") or node["type"]},
        }
    return prompt


def _widget_values(node, schema):
    slots = widget_slots(schema)
    values = node.get("widgets_values", [])
    if len(values) != len(slots):
        raise ValueError(
            f"node {node['id']} ({node['type']}) has {len(values)} widget values, its inputs need {len(slots)}: "
            f"{[s[0] or s[1] for s in slots]}"
        )
    for (name, kind), value in zip(slots, values, strict=True):
        if kind == "value":
            yield name, value


WORKFLOWS_DIR = REPO / "workflows"


def template_titles() -> dict[str, str]:
    """``{API prompt name: UI file stem}``: a UI workflow is named by its title in the template browser
    (``tools/workflow_specs.py``), its API prompt by the short name the client takes."""
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    try:
        from workflow_specs import WORKFLOWS
    finally:
        sys.path.remove(str(REPO / "tools"))
    return {w.name: w.title for w in WORKFLOWS}


def ui_workflows() -> dict[str, Path]:
    """``{name: path}`` of the UI workflows (the template browser's: the folder's top level), keyed by their API
    prompt's name; a file that no spec titles keeps its own stem (and so fails the tests that pair the two)."""
    names = {title: name for name, title in template_titles().items()}
    return {names.get(p.stem, p.stem): p for p in sorted(WORKFLOWS_DIR.glob("*.json"))}


def api_workflows() -> dict[str, Path]:
    return {p.stem: p for p in sorted((WORKFLOWS_DIR / "api").glob("*.json"))}


def host_types_used() -> set[str]:
    """Every node type the workflow files use that is neither this pack's nor frontend-only."""
    pack = set(pack_schemas())
    used = set()
    for path in ui_workflows().values():
        used |= {n["type"] for n in json.loads(path.read_text())["nodes"]}
    for path in api_workflows().values():
        used |= {n["class_type"] for n in json.loads(path.read_text()).values()}
    return used - pack - FRONTEND_ONLY


def host_snapshot(object_info: dict, system_stats: dict) -> dict:
    """What ``tests/support/data/host_nodes.json`` holds: the schemas of the host nodes the workflows use."""
    return {
        "comment": "Written by tests/host/test_workflows_host.py from a live /object_info; "
        "PBE_UPDATE_HOST_SNAPSHOT=1 rewrites it.",
        "comfyui_version": system_stats.get("system", {}).get("comfyui_version"),
        "nodes": object_info_schemas(object_info, sorted(host_types_used())),
    }


def write_host_snapshot(snapshot: dict, path: Path = HOST_SNAPSHOT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(snapshot, indent=1) + "\n")
