"""Build workflows/*.json (UI), workflows/api/*.json (API), their .jpg thumbnails and the README's graph picture.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-python tools/build_workflows.py

Starts ComfyUI headless with this pack (``tests/comfy_host.py``) and opens its own frontend in headless Chromium
(``tools/frontend.py``). The frontend builds each graph of ``tools/workflow_specs.py`` node by node and serialises it,
so the UI files are in exactly the format the frontend writes; the API prompts are built here from the same spec with
the live ``/object_info``'s defaults. The pictures are screenshots of the frontend with the workflow loaded.
Run it again after changing a spec or a node's inputs; ``tests/test_workflows.py`` checks the result offline.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO))

from comfy_host import ComfyServer  # noqa: E402
from frontend import Browser  # noqa: E402
from workflow_specs import WORKFLOWS, Workflow  # noqa: E402

log = logging.getLogger("build_workflows")

BUILD_JS = r"""
(async (spec) => {
  app.graph.clear();
  const nodes = {}, ids = {};
  for (const n of spec.nodes) {
    const node = LiteGraph.createNode(n.type);
    if (!node) throw new Error(`unknown node type ${n.type}`);
    node.pos = n.pos;
    if (n.title) node.title = n.title;
    for (const [name, value] of Object.entries(n.widgets)) {
      const w = (node.widgets || []).find((w) => w.name === name);
      if (!w) throw new Error(`${n.type} has no widget ${name}`);
      w.value = value;
    }
    app.graph.add(node);
    if (n.size) node.size = n.size;
    nodes[n.key] = node;
    ids[n.key] = node.id;
  }
  for (const [a, slot, b, name] of spec.links) {
    const idx = nodes[b].findInputSlot(name);
    if (idx < 0) throw new Error(`${nodes[b].type} has no input ${name}`);
    if (!nodes[a].connect(slot, nodes[b], idx)) throw new Error(`cannot link ${a}:${slot} -> ${b}.${name}`);
  }
  const note = LiteGraph.createNode("Note");
  note.pos = spec.note_pos;
  note.size = spec.note_size;
  note.title = "About this workflow";
  note.widgets[0].value = spec.note;
  app.graph.add(note);
  return { ui: app.graph.serialize(), ids };
})
"""

LOAD_JS = "(async (ui) => { await app.loadGraphData(ui, true, false, null); })"

FIT_JS = r"""
(async () => {
  const title = LiteGraph.NODE_TITLE_HEIGHT || 30;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of app.graph._nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - title);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const el = app.canvas.canvas, W = el.clientWidth, H = el.clientHeight, m = 30;
  const s = Math.min((W - 2 * m) / (x1 - x0), (H - 2 * m) / (y1 - y0), 1.2);
  app.canvas.ds.scale = s;
  app.canvas.ds.offset = [-x0 + (W / s - (x1 - x0)) / 2, -y0 + (H / s - (y1 - y0)) / 2];
  app.canvas.setDirty(true, true);
  app.canvas.draw(true, true);
  return [x0, y0, x1, y1, s];
})
"""


#: frontend settings for clean pictures: no first-run template dialog, no minimap, text drawn at any zoom
SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.1,
    "Comfy.Graph.CanvasInfo": False,
}

#: pixels the frontend's top bar and side bar take from the window
CHROME = 40

#: only the canvas and the DOM widgets drawn over it (the notes' text): no menus, tabs or zoom controls
CANVAS_ONLY_CSS = (
    "*{visibility:hidden !important}"
    "#graph-canvas,.dom-widget,.dom-widget *{visibility:visible !important}"
)


def api_prompt(spec: Workflow, ids: dict[str, int], object_info: dict) -> dict:
    """The spec as an API prompt: every widget input set (the spec's value or the node's default), links by id."""
    prompt = {}
    for n in spec.nodes:
        info = object_info[n.type]
        inputs = {}
        order = info["input_order"]
        for group in ("required", "optional"):
            for name in order.get(group, []):
                kind, opts = info["input"][group][name][0], (info["input"][group][name] + [{}])[1]
                if not is_widget(kind, opts):
                    continue
                if name in n.widgets:
                    inputs[name] = n.widgets[name]
                elif "default" in opts:
                    inputs[name] = opts["default"]
                elif isinstance(kind, list) and kind:
                    inputs[name] = kind[0]
                elif kind == "COMBO" and opts.get("options"):
                    inputs[name] = opts["options"][0]
                else:
                    raise ValueError(f"{spec.name}: {n.type}.{name} needs a value")
        for a, slot, b, name in spec.links:
            if b == n.key:
                inputs[name] = [str(ids[a]), slot]
        unknown = set(n.widgets) - set(inputs)
        if unknown:
            raise ValueError(f"{spec.name}: {n.type} has no widget input {sorted(unknown)}")
        prompt[str(ids[n.key])] = {
            "inputs": dict(sorted(inputs.items(), key=lambda kv: _position(info, kv[0]))),
            "class_type": n.type,
            "_meta": {"title": n.title or info["display_name"]},
        }
    return dict(sorted(prompt.items(), key=lambda kv: int(kv[0])))


def _position(info, name):
    order = info["input_order"]
    names = order.get("required", []) + order.get("optional", [])
    return names.index(name)


def is_widget(kind, opts) -> bool:
    """As the frontend decides: a combo list or a primitive type is a widget unless forced to be a socket."""
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _post_setting(server: ComfyServer, key: str, value) -> None:
    req = urllib.request.Request(
        f"{server.base}/settings/{key}", data=json.dumps(value).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30):  # noqa: S310 - loopback
        pass


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI folder (or COMFYUI_PATH)")
    parser.add_argument("--out", type=Path, default=REPO / "workflows")
    parser.add_argument("--readme-image", type=Path, default=REPO / "docs" / "graph.jpg")
    parser.add_argument("--thumb-size", default="1024x768")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.comfyui:
        parser.error("set --comfyui or COMFYUI_PATH")
    # the canvas starts below the (hidden) top bar and right of the side bar: the pictures are the canvas' box
    tw, th = (int(v) + CHROME for v in args.thumb_size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="pbe-build-workflows-"))
    server = ComfyServer(args.comfyui, work).start()
    try:
        example = Path(args.comfyui) / "input" / "example.png"
        if example.is_file():  # what a fresh ComfyUI shows in the templates' Load Image nodes
            shutil.copy(example, server.input_dir / "example.png")
        for key, value in SETTINGS.items():
            _post_setting(server, key, value)
        object_info = server.object_info()
        (args.out / "api").mkdir(parents=True, exist_ok=True)
        with Browser(tw, th) as browser:
            browser.open(server.base, "!!(window.app && app.graph && window.LiteGraph && app.canvas)")
            time.sleep(2)
            browser.evaluate(
                f"document.head.insertAdjacentHTML('beforeend', '<style>{CANVAS_ONLY_CSS}</style>')"
            )
            for spec in WORKFLOWS:
                built = browser.evaluate(f"{BUILD_JS}({json.dumps(asdict(spec))})")
                ui, ids = built["ui"], built["ids"]
                write_json(args.out / f"{spec.name}.json", ui)
                write_json(args.out / "api" / f"{spec.name}.json", api_prompt(spec, ids, object_info))
                browser.evaluate(f"{LOAD_JS}({json.dumps(ui)})")
                time.sleep(1.5)  # image previews load (and grow their nodes)
                browser.evaluate(f"{FIT_JS}()")
                time.sleep(0.5)
                browser.screenshot(args.out / f"{spec.name}.jpg", selector="#graph-canvas")
                log.info("%s: %d nodes, %d links", spec.name, len(ui["nodes"]), len(ui["links"]))
                if spec.name == "pbe_one_node_edit" and args.readme_image:
                    browser.resize(1400 + CHROME, 800 + CHROME)
                    browser.evaluate(f"{FIT_JS}()")
                    time.sleep(0.5)
                    args.readme_image.parent.mkdir(parents=True, exist_ok=True)
                    browser.screenshot(args.readme_image, selector="#graph-canvas")
                    browser.resize(tw, th)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
