"""Open every template as the template browser does, in a given frontend, and keep a screenshot of each.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-python tools/check_templates.py OUT_DIR \
        [--front-end-root /path/to/comfyui_frontend_package/static] [--workflows DIR] [--model FILE]

Starts ComfyUI headless with this pack and no model (or ``--model`` as ``model.ckpt``) (``tests/support/comfy_host.py``), with the frontend of
``--front-end-root`` (e.g. a newer ``comfyui-frontend-package``'s ``static`` folder) or its own; opens each template
from the route the browser uses (``/api/workflow_templates/<pack>/<name>.json``) with ``app.loadGraphData`` as the
frontend's template loader calls it, and writes ``OUT_DIR/<name>.png`` (the whole window: a missing-model card shows)
and ``OUT_DIR/<name>.txt`` (the window's text, which names a missing model, its folder and download link when the
workflow says them); where the frontend shows a missing-model card, its "View details" panel too
(``OUT_DIR/<name> - details.png``); last, the template browser (``OUT_DIR/template browser.png``). A developer tool, like ``build_workflows.py``: it needs Chromium and websocket-client.
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
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "support"))
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO))

from build_workflows import SETTINGS, _post_setting  # noqa: E402
from comfy_host import PACK_NAME, ComfyServer  # noqa: E402
from frontend import Browser  # noqa: E402
from workflow_specs import MODEL  # noqa: E402

log = logging.getLogger("check_templates")

#: as the frontend's template loader: fetch the file from the template route, load it as a template
#: the missing-model card's "View details" (newer frontends): opens the panel that lists each missing model
DETAILS_JS = r"""
(() => {
  const b = [...document.querySelectorAll("button")].find((e) => e.innerText.trim() === "View details");
  if (b) b.click();
  return !!b;
})()
"""

#: best effort: open the template browser from the side bar and pick the pack's own category where there is one
BROWSER_JS = r"""
(async (pack) => {
  const norm = (e) => (e.innerText || "").replace(/\u00ad/g, "").trim();
  const find = (text) => [...document.querySelectorAll("button, a, li, [role=button], [role=option], span, div")]
    .filter((e) => norm(e) === text).pop();
  const side = find("Templates");
  if (!side) return "no Templates button";
  side.click();
  await new Promise((r) => setTimeout(r, 2500));
  const own = find(pack);
  if (own) { own.click(); await new Promise((r) => setTimeout(r, 2500)); }
  return own ? "pack category" : "all templates";
})
"""

OPEN_JS = r"""
(async (url, name, file) => {
  const json = url ? await (await fetch(url)).json() : file;
  await app.loadGraphData(json, true, true, name, { openSource: "template" });
  return app.graph._nodes.length;
})
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI folder (or COMFYUI_PATH)")
    parser.add_argument("--front-end-root", help="a frontend's static folder (ComfyUI's --front-end-root)")
    parser.add_argument("--workflows", type=Path, default=REPO / "workflows", help="the templates to open")
    parser.add_argument("--model", type=Path, help="a file offered as models/paint_by_example/model.ckpt (then no "
                        "template should report a missing model)")
    parser.add_argument("--size", default="1600x1000")
    parser.add_argument("--settle", type=float, default=4.0, help="seconds the frontend gets to check the models")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.comfyui:
        parser.error("set --comfyui or COMFYUI_PATH")
    w, h = (int(v) for v in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pbe-check-templates-"))
    extra = ["--front-end-root", str(Path(args.front_end_root).resolve())] if args.front_end_root else []
    models = {MODEL["name"]: args.model.resolve()} if args.model else None
    server = ComfyServer(args.comfyui, work, models=models, extra_args=extra).start()
    try:
        example = Path(args.comfyui) / "input" / "example.png"
        if example.is_file():
            shutil.copy(example, server.input_dir / "example.png")
        for key, value in SETTINGS.items():
            _post_setting(server, key, value)
        listed = server.get_json("/workflow_templates").get(PACK_NAME, [])
        log.info("template route lists: %s", listed)
        names = sorted(p.stem for p in args.workflows.glob("*.json"))
        with Browser(w, h) as browser:
            browser.open(server.base, "!!(window.app && app.graph && window.LiteGraph && app.canvas)")
            version = browser.evaluate("window.__COMFYUI_FRONTEND_VERSION__ || null")
            log.info("frontend %s", version)
            for name in names:
                url = f"/api/workflow_templates/{PACK_NAME}/{urllib.parse.quote(name)}.json"
                file = None
                if name not in listed:  # e.g. an older version's files: opened from disk, as a dropped file
                    log.warning("%s is not listed by the template route: opened from %s", name, args.workflows)
                    url, file = None, json.loads((args.workflows / f"{name}.json").read_text())
                browser.evaluate(f"{OPEN_JS}({json.dumps(url)}, {json.dumps(name)}, {json.dumps(file)})")
                time.sleep(args.settle)  # the missing-model scan runs in the background after loading
                browser.screenshot(args.out / f"{name}.png", fmt="png")
                text = browser.evaluate("document.body.innerText")
                if browser.evaluate(DETAILS_JS):
                    time.sleep(1.0)
                    browser.screenshot(args.out / f"{name} - details.png", fmt="png")
                    text += "\n\n--- View details ---\n\n" + browser.evaluate("document.body.innerText")
                (args.out / f"{name}.txt").write_text(f"frontend {version}\n\n{text}")
                log.info("%s: %d characters of text, 'missing' %d times", name, len(text), text.lower().count("missing"))
            log.info("template browser: %s", browser.evaluate(f"{BROWSER_JS}({json.dumps(PACK_NAME)})"))
            browser.screenshot(args.out / "template browser.png", fmt="png")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
