"""The benchmark report (benchmarks/report.py) rendered from runs saved in docs/benchmarks-raw, as
``benchmarks/run.py --render`` does: every section renders, and the report names no folder of the machine it ran on
(the saved runs' command lines carry such folders)."""

import json
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stdlib

REPO = Path(__file__).resolve().parents[2]
RAW = REPO / "docs" / "benchmarks-raw"
sys.path.insert(0, str(REPO / "benchmarks"))

import report  # noqa: E402


def _saved(*names):
    return report.combine([json.loads((RAW / name).read_text())["report"] for name in names])


#: the runs docs/benchmarks.md is rendered from
DOCS_RUNS = ("2026-11-30-final.json", "2026-11-30-final-fast-path.json", "2026-12-02-precision-50-steps-and-main.json")


@pytest.mark.parametrize("runs", [DOCS_RUNS, ("2026-12-02-precision-validation.json",)])
def test_saved_runs_render_without_the_machines_folders(tmp_path, runs, capsys):
    saved = _saved(*runs)
    assert re.search(r" /(work|tmp)/", saved["command"])  # the saved command lines do name them
    out = tmp_path / "report.md"
    report.write_report(out, saved, saved["command"])
    text = out.read_text()
    assert "## Ratios" in text and "## Headline" in text
    assert not re.search(r"(?<![\w.:/])/(work|root|tmp|home)/", text), "a folder of the benchmark machine"
    assert "--comfyui /path/to/comfyui" in text or "precision section only" in text


def test_the_limit_from_counted_flops(tmp_path, capsys):
    """With the FLOPs counted by benchmarks/flops.py (saved beside the runs), the report gives the FLOP/s each UNet
    call reached: counted FLOPs / the run's own seconds per call."""
    saved = _saved(*DOCS_RUNS)
    saved["flops"] = json.loads((RAW / "unet-flops.json").read_text())
    out = tmp_path / "report.md"
    report.write_report(out, saved, saved["command"])
    text = out.read_text()
    assert "### The limit: FLOP/s reached by a UNet call at 512²" in text
    s = report.summarise_precision(saved["precision"])
    counted = saved["flops"]["unet"]["512"]
    rate = counted["total"] / s["variants"]["diffusers_fp32"]["unet_per_call_s"] / 1e12
    assert f"| diffusers fp32 | {s['variants']['diffusers_fp32']['unet_per_call_s']:.2f} | 1.594 | **{rate:.2f}** |" in text


def test_portable_keeps_urls_relative_paths_and_ratios():
    text = "x --json /work/bench/a.json --out docs/benchmarks.md https://huggingface.co/x 1.0 / 2.0 fp32/bf16"
    assert report.portable(text) == (
        "x --json /path/to/a.json --out docs/benchmarks.md https://huggingface.co/x 1.0 / 2.0 fp32/bf16"
    )


def test_the_compile_section_from_a_saved_run(tmp_path, capsys):
    """benchmarks/compile.py's saved run (``--compile``) adds the torch.compile section: its row carries the run's own
    medians and their ratio, and the section names no folder of the machine."""
    saved = _saved(*DOCS_RUNS)
    run = json.loads((RAW / "2026-12-07-torch-compile-fp32-cold.json").read_text())
    saved["compile"] = [run]
    out = tmp_path / "report.md"
    report.write_report(out, saved, saved["command"])
    text = out.read_text()
    section = text.split("## torch.compile on the UNet", 1)[1].split("\n## ", 1)[0]
    ratio = run["median_compiled_s"] / run["median_eager_s"]
    assert f"| {run['median_eager_s']:.1f} | {run['median_compiled_s']:.1f} | **{ratio:.3f}** |" in section
    assert "/work/" not in section and "/home/" not in section
