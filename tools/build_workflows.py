"""Build workflows/TITLE.json (UI), workflows/api/NAME.json (API), the .jpg thumbnails and the README's graph picture.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-python tools/build_workflows.py

Starts ComfyUI headless with this pack (``tests/support/comfy_host.py``) and opens its own frontend in headless Chromium
(``tools/frontend.py``). The frontend builds each graph of ``tools/workflow_specs.py`` node by node and serialises it,
so the UI files are in exactly the format the frontend writes; the API prompts are built here from the same spec with
the live ``/object_info``'s defaults. The frontend also lays each graph out (``LAYOUT_JS``) once the image previews
have grown their nodes, and the file gets the model's metadata and the view it opens in. The pictures are screenshots
of the frontend with the workflow loaded.
Run it again after changing a spec or a node's inputs; ``tests/workflows/test_workflows.py`` checks the result offline.
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
sys.path.insert(0, str(REPO / "tests" / "support"))
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO))

from comfy_host import ComfyServer  # noqa: E402
from frontend import Browser  # noqa: E402
from workflow_specs import MODEL, WORKFLOWS, Workflow  # noqa: E402

log = logging.getLogger("build_workflows")

BUILD_JS = r"""
(async (spec) => {
  app.graph.clear();
  const nodes = {}, ids = {};
  for (const n of spec.nodes) {
    const node = LiteGraph.createNode(n.type);
    if (!node) throw new Error(`unknown node type ${n.type}`);
    if (n.title) node.title = n.title;
    for (const [name, value] of Object.entries(n.widgets)) {
      const w = (node.widgets || []).find((w) => w.name === name);
      if (!w) throw new Error(`${n.type} has no widget ${name}`);
      w.value = value;
    }
    if (n.type === "PBE_LoadModel") node.properties.models = [spec.model];
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
  note.size = spec.note_size;
  note.title = "About this workflow";
  note.widgets[0].value = spec.note;
  app.graph.add(note);
  return { ui: app.graph.serialize(), ids };
})
"""

LOAD_JS = "(async (ui) => { await app.loadGraphData(ui, true, false, null); })"

#: true once every Load Image node shows its picture (the preview makes the node taller)
IMAGES_SHOWN_JS = r"""
(() => {
  app.canvas.draw(true, true);
  return app.graph._nodes.filter((n) => n.type === "LoadImage").map((n) => {
    const img = n.imgs && n.imgs[0];
    return img && img.complete && img.naturalWidth > 0 ? [n.size[0], n.size[1]] : null;
  });
})()
"""

#: Lay the loaded graph out in columns from the nodes' real sizes (after the previews grew them): each node's box is
#: its title bar (and the badges the frontend draws above it) plus its body; a node whose title the frontend would cut
#: ("Batch Ima...") is widened until it fits. Returns the serialised graph and what was measured.
LAYOUT_JS = r"""
(async (layout) => {
  const T = LiteGraph.NODE_TITLE_HEIGHT, GAP_X = layout.gap_x, GAP_Y = layout.gap_y, M = layout.margin;
  const ctx = document.createElement("canvas").getContext("2d");
  const byId = new Map(app.graph._nodes.map((n) => [n.id, n]));
  const measured = [];
  const above = (n) => {
    const badges = (n.badges || []).map((b) => (typeof b === "function" ? b() : b));
    return T + (badges.length ? 2 + Math.max(...badges.map((b) => b.height)) : 0);
  };
  for (const n of app.graph._nodes) {
    ctx.font = n.titleFontStyle;
    const title = n.getTitle();
    const width = ctx.measureText(title).width;
    // drawTitleText: the title gets the node's width less a title height on each side
    const need = Math.ceil(width + 2 * T + layout.title_slack);
    if (n.size[0] < need) n.size = [need, n.size[1]];
    measured.push({ id: n.id, title, font: n.titleFontStyle, title_width: width, above: above(n) });
  }
  let x = M;
  for (const column of layout.columns) {
    let y = M, right = x;
    for (const [id, room] of column) {
      const n = byId.get(id);
      y += above(n);
      n.pos = [x, y];
      y += n.size[1] + room + GAP_Y;
      right = Math.max(right, x + n.size[0]);
    }
    x = right + GAP_X;
  }
  app.canvas.setDirty(true, true);
  return { ui: app.graph.serialize(), measured };
})
"""

#: the view that shows the whole graph in a canvas of w x h pixels (fit: applied to the canvas; view: only returned)
FIT_JS = r"""
(async (w, h, apply) => {
  const title = LiteGraph.NODE_TITLE_HEIGHT || 30, badge = 24;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of app.graph._nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - title - badge);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const el = app.canvas.canvas, W = w || el.clientWidth, H = h || el.clientHeight, m = 30;
  const s = Math.min((W - 2 * m) / (x1 - x0), (H - 2 * m) / (y1 - y0), 1.2);
  const offset = [-x0 + (W / s - (x1 - x0)) / 2, -y0 + (H / s - (y1 - y0)) / 2];
  if (apply) {
    app.canvas.ds.scale = s;
    app.canvas.ds.offset = offset;
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));  // DOM widgets follow
  }
  return { scale: s, offset };
})
"""

#: the window a template is opened in, for the view saved in the file (the frontend restores it): a 1280 x 800 screen
#: less the frontend's menus
OPEN_VIEW = (1280, 720)
#: layout: canvas margin, gaps between columns and between nodes, and pixels kept beside a title (rounding, fonts)
LAYOUT = {"margin": 20, "gap_x": 60, "gap_y": 40, "title_slack": 8}


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


def build(browser: Browser, spec: Workflow) -> tuple[dict, dict]:
    """The frontend builds the spec's graph, opens it as a user would, waits for the image previews, lays it out
    (``LAYOUT_JS``) and serialises it; the result gets the model's metadata and the view to open it in."""
    data = asdict(spec)
    data["model"] = MODEL
    built = browser.evaluate(f"{BUILD_JS}({json.dumps(data)})")
    browser.evaluate(f"{LOAD_JS}({json.dumps(built['ui'])})")
    _wait_for_previews(browser)
    columns: dict[int, list] = {}
    for n in spec.nodes:
        columns.setdefault(n.col, []).append([built["ids"][n.key], n.room_below])
    note_id = max(n["id"] for n in built["ui"]["nodes"])  # added last
    columns.setdefault(spec.note_col, []).append([note_id, 0])
    laid = browser.evaluate(f"{LAYOUT_JS}({json.dumps({**LAYOUT, 'columns': [columns[c] for c in sorted(columns)]})})")
    ui = laid["ui"]
    ui["extra"]["ds"] = browser.evaluate(f"{FIT_JS}({OPEN_VIEW[0]}, {OPEN_VIEW[1]}, false)")
    ui["models"] = [MODEL]  # the workflow-level list the frontend's missing-model check also reads
    return ui, {"ids": built["ids"], "measured": laid["measured"]}


def _wait_for_previews(browser: Browser, timeout: float = 60) -> None:
    """Until every Load Image node shows its picture and its size has settled (two equal readings in a row)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        sizes = browser.evaluate(IMAGES_SHOWN_JS)
        if all(sizes) and sizes == last:
            return
        last = sizes
        time.sleep(0.25)
    raise RuntimeError(f"the Load Image previews did not settle within {timeout} s: {last}")


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
        for old in [*args.out.glob("*.json"), *args.out.glob("*.jpg")]:  # templates are named by their titles
            old.unlink()
        with Browser(tw, th) as browser:
            browser.open(server.base, "!!(window.app && app.graph && window.LiteGraph && app.canvas)")
            time.sleep(2)
            browser.evaluate(
                f"document.head.insertAdjacentHTML('beforeend', '<style>{CANVAS_ONLY_CSS}</style>')"
            )
            for spec in WORKFLOWS:
                ui, layout = build(browser, spec)
                write_json(args.out / f"{spec.title}.json", ui)
                write_json(args.out / "api" / f"{spec.name}.json", api_prompt(spec, layout["ids"], object_info))
                browser.evaluate(f"{FIT_JS}(0, 0, true)")
                browser.screenshot(args.out / f"{spec.title}.jpg", selector="#graph-canvas")
                log.info("%s: %d nodes, %d links", spec.title, len(ui["nodes"]), len(ui["links"]))
                for m in layout["measured"]:
                    log.info("  %-36s title %5.1f px (%s), %d px above the body", m["title"], m["title_width"],
                             m["font"], m["above"])
                if spec.name == "pbe_one_node_edit" and args.readme_image:
                    browser.resize(1400 + CHROME, 800 + CHROME)
                    browser.evaluate(f"{FIT_JS}(0, 0, true)")
                    args.readme_image.parent.mkdir(parents=True, exist_ok=True)
                    browser.screenshot(args.readme_image, selector="#graph-canvas")
                    browser.resize(tw, th)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
