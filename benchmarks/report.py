"""The report of ``benchmarks/run.py``: medians and ratios from the raw measurements (``benchmarks/measure.py``, or
runs saved with ``--json``), written as Markdown, one function per section.
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

from machine import cpu_flags_text, peak_flops_per_cycle
from measure import PRECISION_ISAS

LABELS = {
    "ours": "ours (ComfyUI defaults)",
    "ours_sdpa": "ours (ComfyUI --use-pytorch-cross-attention)",
    "diffusers": "diffusers",
}
PRECISION_LABELS = {
    "ours_fp32": "ours fp32 (default)",
    "ours_bf16": "ours bf16 (`weight_dtype: bf16`)",
    "diffusers_fp32": "diffusers fp32",
    "diffusers_bf16": "diffusers bf16 (`torch_dtype=torch.bfloat16`)",
}


def med(values) -> float:
    return statistics.median(values)


def summarise(report: dict) -> dict:
    """Medians and ratios from the raw measurements."""
    s: dict = {"sizes": {}}
    edits = report["edits"]
    names = report["variants"]
    ours_names = [n for n in names if n != "diffusers"]
    s["ours_names"] = ours_names
    for size in report["args"]["sizes"]:
        row = {"ratio_total": {}, "ratio_unet_per_call": {}}
        for name in names:
            runs = edits[f"{name}@{size}"]
            row[name] = {
                k: med([r[k] for r in runs])
                for k in ("total_s", "unet_s", "vae_encode_s", "vae_decode_s", "exemplar_s")
            }
            row[name]["unet_calls"] = runs[0]["unet_calls"]
            row[name]["unet_per_call_s"] = med([r["unet_s"] / r["unet_calls"] for r in runs])
            row[name]["rest_s"] = med(
                [r["total_s"] - r["unet_s"] - r["vae_encode_s"] - r["vae_decode_s"] - r["exemplar_s"] for r in runs]
            )
            row[name]["totals"] = [r["total_s"] for r in runs]
        for name in ours_names:  # per repetition round (adjacent in time), then the median
            pairs = zip(edits[f"{name}@{size}"], edits[f"diffusers@{size}"], strict=True)
            row["ratio_total"][name] = med([a["total_s"] / b["total_s"] for a, b in pairs])
            row["ratio_unet_per_call"][name] = row[name]["unet_per_call_s"] / row["diffusers"]["unet_per_call_s"]
        s["sizes"][size] = row
    peak = report["peak_compared"]
    s["peak_rss_mib"] = peak
    s["ratio_peak_rss"] = {n: peak[n] / peak["diffusers"] for n in ours_names}
    fp = report["fast_path"]
    s["fast_path"] = {"size": fp["size"], "fast_s": med(fp["fast_s"]), "plain_s": med(fp["plain_s"])}
    s["fast_path"]["ratio"] = s["fast_path"]["fast_s"] / s["fast_path"]["plain_s"]
    if "fast_s_ours_sdpa" in fp:
        s["fast_path"]["sdpa"] = {"fast_s": med(fp["fast_s_ours_sdpa"]), "plain_s": med(fp["plain_s_ours_sdpa"])}
        s["fast_path"]["sdpa"]["ratio"] = s["fast_path"]["sdpa"]["fast_s"] / s["fast_path"]["sdpa"]["plain_s"]
    s["fast_path"]["reps"] = len(fp["fast_s"])
    if "unshared_s" in fp:
        s["fast_path"]["unshared_s"] = med(fp["unshared_s"])
        s["fast_path"]["shared_ratio"] = s["fast_path"]["fast_s"] / s["fast_path"]["unshared_s"]
    if "edit_fast_s" in fp:
        s["fast_path"]["edit_ratio"] = med(fp["edit_fast_s"]) / med(fp["edit_plain_s"])
    if "layout" in report:
        lay = report["layout"]
        s["layout"] = {"size": lay["size"], "reps": len(lay["nchw"])}
        for k in ("unet_s", "vae_encode_s", "vae_decode_s"):
            cl, nchw = med([r[k] for r in lay["channels_last"]]), med([r[k] for r in lay["nchw"]])
            s["layout"][k] = {"channels_last": cl, "nchw": nchw, "ratio": cl / nchw}
    photo = report["photo"]
    base = med([r["total_s"] for r in photo["512"]])
    model_part = ("unet_s", "vae_encode_s", "vae_decode_s", "exemplar_s")
    s["photo"] = {}
    for n, runs in photo.items():
        total = med([r["total_s"] for r in runs])
        rest = med([r["total_s"] - sum(r[k] for k in model_part) for r in runs])
        s["photo"][n] = {"total_s": total, "rest_s": rest, "ratio": total / base}
    base_rest = s["photo"]["512"]["rest_s"]
    base_model = base - base_rest
    for n in s["photo"]:
        # the same edit with the model's share held at the 512 run's: what the photo's size itself adds
        s["photo"][n]["ratio_rest_only"] = (base_model + s["photo"][n]["rest_s"]) / base
    return s


def fmt_table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def markdown(report: dict, s: dict | None, command: str) -> str:
    """The report. ``s`` (``summarise``) None: a run of the precision section alone, reported alone."""
    if s is None:
        return "\n".join(_precision_only(report, command))
    parts = (_setup(report, command), _end_to_end(report, s), _memory(report, s), _fast_paths(s), _layout(s),
             _compiled(report), _cache_and_photo(report, s), analysis(report, s), _agreement(report))
    return "\n".join(line for part in parts for line in part)


def _precision_only(report: dict, command: str) -> list[str]:
    v = report["versions"]
    return [
        "# Benchmarks: this pack in ComfyUI vs diffusers' PaintByExamplePipeline, fp32 and bf16",
        "",
        f"Generated by `benchmarks/run.py` (precision section only): `{command}`"
        + (f" (commit {report['commit']})" if report.get("commit") else "") + f"; started {report['started']}. "
        f"Versions: Python {v.get('python')}, torch {v.get('torch')}, ComfyUI {v.get('comfyui')}, diffusers "
        f"{v.get('diffusers')}, transformers {v.get('transformers')}.",
        *(f"- {note}" for note in report.get("notes", [])),
        "",
        *precision_markdown(report),
    ]


def _setup(report: dict, command: str) -> list[str]:
    a = report["args"]
    v = report["versions"]
    return [
        "# Benchmarks: this pack in ComfyUI vs diffusers' PaintByExamplePipeline",
        "",
        "Generated by `benchmarks/run.py` from the run(s) named below, "
        + ("on the machines named below (the headline's in its section). "
           if "precision" in report and report["precision"].get("machine") != report["machine"] else "on one machine. ")
        + "Re-run with the command below.",
        "",
        "## Setup",
        "",
        f"- Command: `{command}`" + (f" (commit {report['commit']})" if report.get("commit") else ""),
        *(f"- {note}" for note in report.get("notes", [])),
        f"- Machine: {report['machine']}; {a['threads']} torch threads, `OMP_WAIT_POLICY=PASSIVE`; started "
        f"{report['started']}. The machine was shared with other jobs, so absolute times are noisy; the two "
        "implementations were interleaved and are compared by ratios within the run.",
        f"- Versions: Python {v.get('python')}, torch {v.get('torch')}, ComfyUI {v.get('comfyui')}, diffusers "
        f"{v.get('diffusers')}, transformers {v.get('transformers')}, numpy {v.get('numpy')}.",
        "- Model: the full Paint-by-Example architecture (1,310,140,139 parameters, fp32) with seeded random weights, "
        "written once as a diffusers folder and as the original single-file layout from the same tensors.",
        f"- Ours: `PBE_LoadModel` + `PBE_Sampler` (sampler `reference` = official PLMS, {a['steps']} steps, cfg "
        f"{a['cfg']}, exemplar `center_crop` as diffusers, feather 8, paste-back), called in-process inside ComfyUI "
        f"started with `--cpu` (host attention: `{report['load_ours']['attention']}`), under "
        "`torch.inference_mode()` as ComfyUI's executor runs nodes"
        + (f"; and the same in a ComfyUI started with `--cpu --use-pytorch-cross-attention` (host attention: "
           f"`{report['load_ours_sdpa']['attention']}`)." if "ours_sdpa" in report["variants"] else "."),
        f"- Diffusers: `PaintByExamplePipeline` (PNDM, skip_prk_steps, same steps, `guidance_scale` {a['cfg']}, the "
        f"same initial noise), components loaded with `from_pretrained` (`low_cpu_mem_usage="
        f"{report['load_diffusers']['low_cpu_mem_usage']}`, attention processor "
        f"`{report['load_diffusers']['attention']}`).",
        f"- Repetitions: 1 warm-up + {a['reps']} timed edits per implementation and size, interleaved (the order "
        "rotating every repetition); medians, and ratios as the median of each repetition's ratio. Each edit encodes its exemplar (ours: the encoder's cache is cleared first).",
        "",
        *(precision_markdown(report) if "precision" in report else []),
    ]


def _end_to_end(report: dict, s: dict) -> list[str]:
    a = report["args"]
    lines = [
        f"## End-to-end {a['steps']}-step edits in fp32 (exemplar encoding + sampling + decoding)"
        + (": the breakdown behind the headline" if "precision" in report else ""),
        "",
    ]
    rows = []
    for size, row in s["sizes"].items():
        d = row["diffusers"]
        for name in s["ours_names"]:
            o = row[name]
            rows.append([f"{size}²", LABELS[name], f"{o['total_s']:.1f}", f"{d['total_s']:.1f}",
                         f"**{row['ratio_total'][name]:.2f}**", f"{o['unet_per_call_s']:.2f}",
                         f"{d['unet_per_call_s']:.2f}", f"{row['ratio_unet_per_call'][name]:.2f}",
                         f"{o['unet_calls']} / {d['unet_calls']}"])
    lines.append(fmt_table(
        ["size", "ours", "ours s", "diffusers s", "ours / diffusers", "ours UNet s/call", "diffusers UNet s/call",
         "UNet ratio", "UNet calls"], rows))
    lines += [
        "",
        "A UNet call evaluates the batch of two (exemplar and unconditional vector) that classifier-free guidance "
        "needs; PLMS / PNDM(skip_prk) make steps + 1 calls. Timed edits: "
        + "; ".join(
            f"{size}²: " + ", ".join(
                f"{LABELS[n]} {' / '.join(f'{t:.1f}' for t in row[n]['totals'])} s" for n in report["variants"]
            )
            for size, row in s["sizes"].items()
        )
        + ".",
        "",
        "### Where the time goes (medians, seconds)",
        "",
    ]
    rows = []
    for size, row in s["sizes"].items():
        for name in report["variants"]:
            r = row[name]
            rows.append([f"{size}²", LABELS[name], f"{r['total_s']:.1f}", f"{r['unet_s']:.1f} ({100 * r['unet_s'] / r['total_s']:.0f}%)",
                         f"{r['vae_encode_s']:.1f}", f"{r['vae_decode_s']:.1f}", f"{r['exemplar_s']:.2f}",
                         f"{r['rest_s']:.2f}"])
    lines.append(fmt_table(["size", "", "total", "UNet", "VAE encode", "VAE decode", "exemplar encoder", "rest"], rows))
    return lines


def _memory(report: dict, s: dict) -> list[str]:
    pa = report.get("section_args", {}).get("photo", report["args"])  # the photo section's own run
    peak = s["peak_rss_mib"]
    return [
        "",
        "\"rest\" is everything outside those four networks: preprocessing, the sampler's maths, the pack's mask and "
        "paste-back work, the host's model management (ours) or the pipeline's pre/post-processing (diffusers).",
        "",
        "## Memory",
        "",
        fmt_table(["", "peak RSS, loading + the edits above (MiB)", "/ diffusers", "RSS after loading (MiB)",
                   "load time (s)"], [
            [LABELS[n], f"{peak[n]:.0f}", f"**{s['ratio_peak_rss'][n]:.2f}**" if n in s["ratio_peak_rss"] else "",
             f"{report[f'load_{n}']['rss_mib']:.0f}", f"{report[f'load_{n}']['load_s']:.1f}"]
            for n in report["variants"]
        ]),
        "",
        "The pack's worker (ComfyUI defaults) of the run that measured the photo section also ran the sections "
        f"below; its peak over that whole run, photo "
        f"sizes up to {max([512, *pa['photo_sizes']])}² included"
        + (" (and the channels-last section's extra copy of the UNet and VAE)" if "layout" in report else "")
        + f", was {report['final_ours']['peak_rss_mib']:.0f} MiB.",
        "",
        "Peak RSS is each worker process's `ru_maxrss` (loading included; memory-mapped file pages count once touched). "
        "The pack's models are host objects (the UNet a `ModelPatcher`, the exemplar encoder behind its own "
        "`ModelPatcher`, the VAE a host `VAE`), so ComfyUI's model management loads and offloads them. `--lowvram` "
        "only saves memory with a GPU, which this machine does not have; a host test loads the pack's models "
        "partially (the host's layer-by-layer weight casting that `--lowvram` uses) and checks they give the same "
        "numbers (tests/host/test_inprocess_host.py).",
        "",
    ]


def _fast_paths(s: dict) -> list[str]:
    lines: list[str] = []
    fp = s["fast_path"]
    text = (
        f"One UNet evaluation at {fp['size']}² (batch 2: the same latent and timestep with the exemplar and the "
        "unconditional token, as CFG makes it), alone, with and without the fast path, interleaved, median "
        f"of {fp['reps']} each: ComfyUI defaults {fp['fast_s']:.2f} s vs {fp['plain_s']:.2f} s, "
        f"**{fp['ratio']:.3f}×**"
    )
    if "sdpa" in fp:
        sd = fp["sdpa"]
        text += f"; with `--use-pytorch-cross-attention` {sd['fast_s']:.2f} s vs {sd['plain_s']:.2f} s, **{sd['ratio']:.3f}×**"
    if "edit_ratio" in fp:
        text += f"; whole edits {fp['edit_ratio']:.3f}×"
    lines += [
        "## Single-token cross-attention fast path",
        "",
        text + ". It is on by default (`PBE_LoadModel`'s `single_token_attention`); it is exact to fp32 rounding "
        "(tests/host/test_inprocess_host.py).",
        "",
    ]
    if "shared_ratio" in fp:
        lines += [
            "## CFG halves share the layers before the first cross-attention",
            "",
            "The two halves of a CFG batch (exemplar, unconditional vector) have the same latent, concat and "
            "timestep, so the UNet's first ResBlock and first self-attention compute the same values twice; the pack "
            "runs them once when the halves are equal (checked every call) and repeats the result "
            f"(`nodes/host/shared_cfg_prefix.py`). The same UNet evaluations as above: {fp['fast_s']:.2f} s vs "
            f"{fp['unshared_s']:.2f} s without it, **{fp['shared_ratio']:.3f}×**. Always on; exact to fp32 rounding "
            "(tests/host/test_inprocess_host.py).",
            "",
        ]
    return lines


def _layout(s: dict) -> list[str]:
    if "layout" not in s:
        return []
    lay = s["layout"]
    names = {"unet_s": "UNet call (batch 2)", "vae_encode_s": "VAE encode", "vae_decode_s": "VAE decode"}
    return [
        "## Channels-last convolution kernels",
        "",
        f"At {lay['size']}², the same weights with their convolution kernels in each memory order (one copy of the "
        f"modules per order, so no conversion is timed), interleaved, median of {lay['reps']} each. On the CPU "
        "the loader lays the VAE's kernels out channels-last for a bf16 VAE only (in fp32 the other summation "
        "order moves the result beyond the thread-count noise floor), re-ordered in place so the weights stay one copy "
        "(`pbe_core/weights/memory_format.py`; the same values: tests/pbe_core/weights/test_memory_format.py). "
        "The UNet's stay as the file has them in fp32: the gain is small here and turned into a loss at 256² in a "
        "separate probe (1.04×), while re-ordering its 2 GB of kernels adds seconds to every load (3.4 s alone in "
        "a probe):",
        "",
        fmt_table(["", "channels-last s", "NCHW s", "channels-last / NCHW"], [
            [names[k], f"{lay[k]['channels_last']:.2f}", f"{lay[k]['nchw']:.2f}", f"**{lay[k]['ratio']:.3f}**"]
            for k in names
        ]),
        "",
    ]


def _compiled(report: dict) -> list[str]:
    """ComfyUI's TorchCompileModel on the full-size UNet, from ``benchmarks/compile.py --json`` runs (``--compile``):
    the first is a cold compile, a later one may be the same from inductor's cache."""
    runs = report.get("compile") or []
    if not runs:
        return []
    first = runs[0]
    rows = []
    for run in runs:
        cache = {True: "warm cache", False: "empty cache", None: "inductor's default cache"}[
            run["inductor_cache_warm_at_start"]]
        pays = run["pays_off_after_steps"]
        rows.append([
            f"{run['size']}², {run['steps']} steps, {run['reps']} edit{'s' if run['reps'] != 1 else ''} each, {cache}", f"{run['median_eager_s']:.1f}",
            f"{run['median_compiled_s']:.1f}", f"**{run['compiled_over_eager']:.3f}**", f"{run['compile_s']:.0f}",
            f"{run['gain_per_step_s']:.2f}", "never" if pays is None else f"{pays:.0f}",
            str(run["dynamo"]["stats"].get("unique_graphs", "?")), str(run["dynamo"]["graph_breaks"]),
            f"{run['max_abs_diff_compiled_vs_eager']:.1e}",
        ])
    return [
        "## torch.compile on the UNet: ComfyUI's TorchCompileModel (inductor, CPU)",
        "",
        f"`benchmarks/compile.py`: this pack's one-node edit in ComfyUI in-process, fp32, the loader's MODEL eager and "
        f"the same MODEL through the host's `TorchCompileModel` (backend inductor), edits interleaved (order "
        "alternating), medians after one eager warm-up edit and one first compiled edit, "
        f"whose extra time over an eager edit is the compile time (dynamo, inductor's code generation, the C++ "
        f"compiler: inductor on the CPU needs one, e.g. gcc). {first['threads']} torch threads, "
        f"`OMP_WAIT_POLICY=PASSIVE`; {first['machine']}. Command: `{portable(first['command'])}`.",
        "",
        fmt_table(["", "eager edit s", "compiled edit s", "compiled / eager", "compile s", "gain s / step",
                   "pays off after steps", "graphs", "graph breaks", "image max abs diff"], rows),
        "",
        "A step is one UNet call on the CFG batch; the VAE and the exemplar encoder are not compiled, so the gain per "
        "step is the edits' difference over their steps. The compiled graph lasts as long as the MODEL and its input "
        "sizes; a new size compiles again. The shared CFG prefix steps aside while the graph is traced "
        "(`nodes/host/shared_cfg_prefix.py`), so the compiled UNet computes both halves in full.",
        "",
    ]


def _cache_and_photo(report: dict, s: dict) -> list[str]:
    pa = report.get("section_args", {}).get("photo", report["args"])  # the photo section's own run
    lines: list[str] = []
    ec = report["exemplar_cache"]
    lines += [
        "## Exemplar encoded once",
        "",
        f"Two edits that differ only in the seed: the exemplar encoder ran {ec['first_calls']} time(s) in the first "
        f"and {ec['seed_change_calls']} in the second ({ec['first_s']:.1f} s, then {ec['seed_change_s']:.1f} s).",
        "",
        "## Photo size (crop-and-stitch)",
        "",
        f"`PBE_Sampler` on an N×N photo whose mask box covers 10% of it, `working_size` 512, {pa['photo_steps']} "
        "step(s) (fewer steps make the size-dependent part a larger share, so this is the conservative setting), "
        f"median of {pa['reps']}, sizes interleaved.",
        "",
    ]
    rows = [[f"{n}²", f"{p['total_s']:.1f}", f"{p['rest_s']:.2f}", f"**{p['ratio']:.2f}**", f"{p['ratio_rest_only']:.3f}"]
            for n, p in s["photo"].items()]
    lines.append(fmt_table(["photo", "edit s", "outside the networks s", "vs 512² edit", "vs 512², model part held"],
                           rows))
    lines += [
        "",
        "The last column replaces the networks' time by the 512² run's, which removes the noise of the shared machine "
        "from the comparison: it is what the photo's size itself adds inside the node (input checks, mask tools, crop, "
        "stitch; decoding the photo's file is LoadImage's work and not counted).",
        "",
    ]
    return lines


def _agreement(report: dict) -> list[str]:
    ag = report.get("agreement")
    if not ag:
        return []
    return [
        "## Same weights, same result",
        "",
        f"At {ag['size']}², same inputs and initial noise: ours vs diffusers inside the mask, max abs "
        f"{ag['max_abs']:.2e}, mean abs {ag['mean_abs']:.2e} (0..1 pixels).",
        "",
    ]



def analysis(report: dict, s: dict) -> list[str]:
    """The targets against the numbers, where the time goes, and the floor."""
    size = max(s["sizes"])
    row = s["sizes"][size]
    d = row["diffusers"]
    lines = ["## Targets and the floor", ""]
    rows = []
    for n in s["ours_names"]:
        r = row["ratio_total"][n]
        m = s["ratio_peak_rss"][n]
        rows.append([LABELS[n], f"{r:.2f}", "met" if r <= 0.85 else "**missed**", f"{m:.2f}",
                     "met" if m <= 1.0 else "**missed**"])
    lines.append(fmt_table([f"at {size}², {report['args']['steps']} steps", "end-to-end / diffusers",
                            "target ≤ 0.85", "peak RSS / diffusers", "target ≤ 1.0"], rows))
    lines += ["", f"Where an edit's time goes at {size}² (share of the total):", ""]
    rows = []
    for n in report["variants"]:
        o = row[n]
        t = o["total_s"]
        nets = t - o["rest_s"]
        rows.append([LABELS[n], f"{100 * o['unet_s'] / t:.0f}%",
                     f"{100 * (o['vae_encode_s'] + o['vae_decode_s']) / t:.0f}%",
                     f"{100 * o['exemplar_s'] / t:.1f}%", f"{100 * o['rest_s'] / t:.1f}%",
                     f"{nets:.1f} s ({nets / d['total_s']:.2f}× diffusers)"])
    lines.append(fmt_table(["", "UNet", "VAE", "exemplar encoder", "rest (host, pack, pipeline)",
                            "floor: the networks alone"], rows))
    peak = s["peak_rss_mib"]
    lines += ["", "Peak RSS, split into what the process held after loading and what the edits added on top:", ""]
    lines.append(fmt_table(["", "after loading (MiB)", "added by the edits (MiB)", "peak (MiB)"], [
        [LABELS[n], f"{report[f'load_{n}']['rss_mib']:.0f}", f"{peak[n] - report[f'load_{n}']['rss_mib']:.0f}",
         f"{peak[n]:.0f}"] for n in report["variants"]
    ]))
    fp = s["fast_path"]
    rest = max(row[n]["rest_s"] for n in s["ours_names"])
    n0 = s["ours_names"][0]
    lines += [
        "",
        "Reading it:",
        "",
        "- Both implementations run the same fp32 networks on the same weights with the same number of UNet calls. "
        f"Outside the four networks the pack and the host spend at most {rest:.2f} s per edit (mask tools, "
        "conditioning, paste-back, model management, the sampler's own maths), so the floor for this pack is the last "
        "column above: the networks' time with the kernels the host runs. Everything above that floor is kernel time.",
        "- Attention. On a CPU, ComfyUI's default attention is its sub-quadratic one, which computes the score "
        "matrix of the 4096-token self-attention at 64² latents chunk by chunk; for PbE that costs about a third more "
        "time per UNet call and a gigabyte more memory than torch's SDPA (the pack measured 1.34× diffusers' time and "
        "1.17× its peak RSS at 512² that way: docs/benchmarks-raw/full-run.json). So the pack runs its own UNet's "
        "attention with torch's SDPA, the kernel diffusers uses, through the host's per-model "
        "`optimized_attention_override` (nodes/host/attention_choice.py; other models are untouched, and nothing changes "
        "where the host already uses SDPA or runs on a GPU).",
        f"- The single-token path removes the cross-attention work from every UNet call ({100 * (1 - fp['ratio']):.1f}% "
        f"of a call at {fp['size']}² with the host's default attention"
        + (f", {100 * (1 - fp['sdpa']['ratio']):.1f}% with SDPA" if "sdpa" in fp else "")
        + ")"
        + (f"; the shared CFG prefix runs the first ResBlock and self-attention once for both halves "
           f"({100 * (1 - fp['shared_ratio']):.1f}% of a call)" if "shared_ratio" in fp else "")
        + ". Both are exact and remove work that PbE's inputs make redundant; the rest of the UNet (self-attention, "
        "ResNet blocks and feed-forward layers once the halves differ) is the same maths in both implementations.",
        f"- Per network at {size}² (ours / diffusers): UNet {row[n0]['unet_s'] / d['unet_s']:.2f}, VAE encode "
        f"{row[n0]['vae_encode_s'] / max(d['vae_encode_s'], 1e-9):.2f}, VAE decode "
        f"{row[n0]['vae_decode_s'] / max(d['vae_decode_s'], 1e-9):.2f}, exemplar encoder "
        f"{row[n0]['exemplar_s'] / max(d['exemplar_s'], 1e-9):.2f}. Both sides run the same fp32 maths with the "
        "same kinds of kernels (oneDNN convolutions, BLAS linear layers, torch's flash-attention SDPA), in PyTorch's "
        "default NCHW order by default. The VAE is faster with its convolution kernels channels-last, which makes "
        "oneDNN run its convolutions on NHWC activations"
        + (f" (measured alone, channels-last / NCHW: VAE encode {s['layout']['vae_encode_s']['ratio']:.2f}×, VAE "
           f"decode {s['layout']['vae_decode_s']['ratio']:.2f}×)" if "layout" in s else "")
        + ", but that summation order moves the result beyond the thread-count noise floor, so fp32 keeps NCHW "
        "(the channels-last layout is the bf16 VAE's). Going further exactly would need "
        "faster kernels; inexact routes (fewer steps, half precision, decoding only the window around the mask) are "
        "outside these rules.",
        "- Memory: the pack holds one copy of the weights (the checkpoint's tensors are the model's). With SDPA its "
        "edits add less memory than diffusers' do; the ComfyUI process itself holds more after import and loading "
        "(first column).",
        "",
    ]
    return lines


# --- the precision section ------------------------------------------------------------------------------------------
def summarise_precision(p: dict) -> dict:
    """Medians and ratios of the precision section (ratios: the median of each repetition's ratio)."""
    s: dict = {"variants": {}, "ratios": {}, "peak_ratios": {}}
    parts = ("total_s", "unet_s", "vae_encode_s", "vae_decode_s", "exemplar_s")
    for name, runs in p["edits"].items():
        short = p["breakdown"][name]
        v = {"total_s": med([r["total_s"] for r in runs]), "totals": [r["total_s"] for r in runs],
             "cpu_s": med([r["cpu_s"] for r in runs]),
             "unet_per_call_s": med([r["unet_s"] / r["unet_calls"] for r in runs]), "unet_calls": runs[0]["unet_calls"],
             "peak_rss_mib": med(p["peak_rss_mib"][name]), "load": p["load"][name][0],
             "breakdown": {k: med([r[k] for r in short]) for k in parts}}
        v["breakdown"]["rest_s"] = med([r["total_s"] - sum(r[k] for k in parts[1:]) for r in short])
        v["breakdown"]["unet_calls"] = short[0]["unet_calls"]
        if "fallbacks" in runs[0]:
            v["fallbacks"] = {k: sum(r["fallbacks"][k] for r in runs + short) for k in runs[0]["fallbacks"]}
            v["checked_calls"] = sum(r["unet_calls"] for r in runs + short)
        s["variants"][name] = v
    names = list(s["variants"])

    def ratio(a: str, b: str, key: str = "total_s") -> float:
        pairs = zip(p["edits"][a], p["edits"][b], strict=True)
        return med([x[key] / y[key] for x, y in pairs])

    s["cpu_ratios"] = {}
    for a, b in (("ours_bf16", "diffusers_fp32"), ("ours_bf16", "diffusers_bf16"), ("ours_fp32", "diffusers_fp32"),
                 ("ours_bf16", "ours_fp32"), ("diffusers_bf16", "diffusers_fp32")):
        if a in names and b in names:
            s["ratios"][f"{a}/{b}"] = ratio(a, b)
            s["cpu_ratios"][f"{a}/{b}"] = ratio(a, b, "cpu_s")
    for a, b in (("ours_bf16", "diffusers_bf16"), ("ours_fp32", "diffusers_fp32")):
        if a in names and b in names:
            s["peak_ratios"][f"{a}/{b}"] = s["variants"][a]["peak_rss_mib"] / s["variants"][b]["peak_rss_mib"]
    if p.get("layout"):
        s["layout"] = {}
        for k in ("unet_s", "vae_encode_s", "vae_decode_s"):
            cl, nchw = med([r["channels_last"][k] for r in p["layout"]]), med([r["nchw"][k] for r in p["layout"]])
            s["layout"][k] = {"channels_last": cl, "nchw": nchw, "ratio": cl / nchw}
    return s


def _met(value: float, target: float) -> str:
    return "met" if value <= target else "**missed**"


def precision_markdown(report: dict) -> list[str]:
    """The precision section: the headline (a whole default edit), its breakdown, accuracy, and the probes behind
    the choice of precisions."""
    p = report["precision"]
    s = summarise_precision(p)
    parts = (_precision_headline(report, p, s), _precision_targets(s), _limit(report, p, s), _precision_breakdown(p, s),
             _precision_agreement(p), _precision_fast_paths(s), _precision_layout(p, s), precision_probes_markdown(p))
    return [line for part in parts for line in part]


def _precision_headline(report: dict, p: dict, s: dict) -> list[str]:
    size, steps, bsteps = p["size"], p["steps"], p["breakdown_steps"]
    v, r = s["variants"], s["ratios"]
    lines = [
        f"## Headline: a {steps}-step edit at {size}², fp32 and bf16",
        "",
        f"- CPU: {p['cpu']['model']}; {cpu_flags_text(p['cpu'])}. {report['args']['threads']} torch threads, "
        f"`OMP_WAIT_POLICY=PASSIVE` (machine: {p['machine']}).",
        f"- Each repetition starts every implementation's worker afresh, one at a time, in a rotating order; each "
        f"loads the model, makes a 1-step warm-up edit, then the {steps}-step edit timed here and the {bsteps}-step "
        f"edit of the breakdown below; medians of {p['reps']} repetitions, ratios as the median of each repetition's "
        f"ratio. Same weights (fp32 files), source, mask, exemplar, initial noise, cfg {report['args']['cfg']}; ours "
        "with the `reference` sampler (official PLMS), diffusers with PNDM: both make steps + 1 UNet calls.",
        "",
    ]
    rows = []
    c = s["cpu_ratios"]
    for name in v:
        o = v[name]
        same = "diffusers_bf16" if name.endswith("bf16") else "diffusers_fp32"
        vs_fp32 = r.get(f"{name}/diffusers_fp32") if name != "diffusers_fp32" else 1.0
        vs_same = r.get(f"{name}/{same}") if not name.startswith("diffusers") else None
        cpu_same = c.get(f"{name}/{same}") if not name.startswith("diffusers") else None
        peak_same = s["peak_ratios"].get(f"{name}/{same}")
        rows.append([PRECISION_LABELS[name], f"{o['total_s']:.1f}", f"**{vs_fp32:.2f}**" if vs_fp32 else "",
                     f"**{vs_same:.2f}**" if vs_same else "", f"{o['cpu_s']:.1f}", f"{cpu_same:.2f}" if cpu_same else "",
                     f"{o['unet_per_call_s']:.2f}", f"{o['peak_rss_mib']:.0f}", f"**{peak_same:.2f}**" if peak_same else ""])
    lines.append(fmt_table(["", "edit s", "/ diffusers fp32", "/ diffusers, same precision", "CPU s",
                            "CPU / diffusers, same precision", "UNet s/call", "peak RSS (MiB)",
                            "/ diffusers, same precision"], rows))
    lines += ["", "CPU s: the worker process's CPU time over the edit, both threads together; on a shared machine it "
              "counts the work done rather than the waits for a core, so its ratios are the steadier ones when other "
              "jobs run (the wall-clock ratios are the targets)."]
    lines += ["", "Timed edits: " + "; ".join(f"{PRECISION_LABELS[n]} {' / '.join(f'{t:.1f}' for t in o['totals'])} s"
                                              for n, o in v.items()) + ".", ""]
    return lines


def _precision_targets(s: dict) -> list[str]:
    v, r = s["variants"], s["ratios"]
    lines: list[str] = []
    targets = []
    if "ours_bf16/diffusers_fp32" in r:
        targets.append(["ours bf16 / diffusers fp32, edit time", f"{r['ours_bf16/diffusers_fp32']:.2f}", "≤ 0.5",
                        _met(r["ours_bf16/diffusers_fp32"], 0.5)])
    if "ours_bf16/diffusers_bf16" in r:
        targets.append(["ours bf16 / diffusers bf16, edit time", f"{r['ours_bf16/diffusers_bf16']:.2f}", "≤ 0.9",
                        _met(r["ours_bf16/diffusers_bf16"], 0.9)])
    for key, label in (("ours_bf16/diffusers_bf16", "bf16"), ("ours_fp32/diffusers_fp32", "fp32")):
        if key in s["peak_ratios"]:
            targets.append([f"ours / diffusers peak RSS, {label}", f"{s['peak_ratios'][key]:.2f}", "≤ 1.0",
                            _met(s["peak_ratios"][key], 1.0)])
    if "ours_fp32/diffusers_fp32" in r:
        targets.append(["ours fp32 / diffusers fp32, edit time", f"{r['ours_fp32/diffusers_fp32']:.2f}", "", ""])
    if targets:
        lines += [fmt_table(["target", "measured", "target", ""], targets), ""]
    prec = []
    for name in ("ours_fp32", "ours_bf16"):
        if name in v:
            ld = v[name]["load"]
            cl = {True: " (kernels channels-last)", False: ""}
            prec.append(f"{PRECISION_LABELS[name]}: UNet weights {ld['unet_weights']} computed in "
                        f"{ld['unet_computes']}{cl[ld['unet_channels_last']]}, VAE {ld['vae_dtype']}"
                        f"{cl[ld['vae_channels_last']]}, exemplar encoder {ld['encoder_dtype']}")
    lines += ["What each network computes in, as loaded: " + "; ".join(prec) + "; diffusers: every component in its "
              "`torch_dtype`, NCHW. The sampler's latents stay fp32 in ComfyUI (the UNet's output is cast back), "
              "while diffusers' pipeline keeps them in its dtype.", ""]
    return lines


def _limit(report: dict, p: dict, s: dict) -> list[str]:
    """FLOP/s reached by each UNet call against the counted FLOPs (``benchmarks/flops.py``, given as ``--flops``),
    the probes' single kernels and the CPU's peak from its flags and clock."""
    counted = report.get("flops", {}).get("unet", {}).get(str(p["size"]))
    if not counted:
        return []
    threads = report["args"]["threads"]
    per_cycle = peak_flops_per_cycle(p["cpu"])
    mhz = p["cpu"].get("mhz")
    kernels = {op: {dt: report["flops"]["kernels"][op] / med(ts) for dt, ts in by_dt.items()}
               for op, by_dt in p.get("kernels", {}).get("", {}).get("times", {}).items()}
    ours_flops = counted["total"] - counted["cross_attention"]

    def row(label: str, precision: str, s_per_call: float, flops: float) -> list[str]:
        rate = flops / s_per_call
        best = max((k[precision] for k in kernels.values() if precision in k), default=None)
        peak = per_cycle.get(precision)
        if peak and mhz:
            of_peak = f"{rate / (threads * peak * mhz * 1e6):.0%}"
        elif peak:
            of_peak = "clock not recorded: " + ", ".join(
                f"{rate / (threads * peak * ghz * 1e9):.0%} at {ghz} GHz" for ghz in (2, 3))
        else:
            of_peak = "?"
        return [label, f"{s_per_call:.2f}", f"{flops / 1e12:.3f}", f"**{rate / 1e12:.2f}**",
                f"{rate / best:.0%}" if best else "", of_peak]

    rows = [row(PRECISION_LABELS[n], "bf16" if n.endswith("bf16") else "fp32", o["unet_per_call_s"],
                ours_flops if n.startswith("ours") else counted["total"]) for n, o in s["variants"].items()]
    alone = p.get("unet_precisions", {}).get("", {}).get("times", {})
    for key, precision in (("fp32", "fp32"), ("bf16_native", "bf16")):
        if key in alone:
            rows.append([f"ours {precision}, a UNet call alone (probe)", *row("", precision, med(alone[key]),
                                                                                 ours_flops)[1:]])
    peaks = ", ".join(f"{dt} {n} FLOPs per cycle and core" for dt, n in per_cycle.items() if n)
    lines = [f"### The limit: FLOP/s reached by a UNet call at {p['size']}²", "",
             f"One CFG call of the full-size UNet at {p['size']}² is {counted['total'] / 1e12:.3f} TFLOP, counted "
             f"(`benchmarks/flops.py`: {report['flops'].get('counted_with', 'torch FlopCounterMode')}); "
             f"{counted['cross_attention'] / 1e12:.3f} TFLOP of it is the cross-attention, which the pack's "
             "single-token path does not compute per pixel, so the pack's call is counted as the rest (an upper "
             "bound: the shared CFG prefix saves a little more). Times: the median UNet time per call inside the "
             "edits above, and a UNet call alone from the probes below. Peak: "
             f"{threads} cores x clock x ({peaks}; `benchmarks/machine.py`).", "",
             fmt_table(["", "s / call", "TFLOP / call", "TFLOP/s", "/ fastest probe kernel, same precision",
                        "/ CPU peak"], rows), ""]
    if kernels:
        lines += ["The probes' single kernels (below), as FLOP/s: "
                  + "; ".join(f"{op} " + ", ".join(f"{dt} {r / 1e12:.2f}" for dt, r in by_dt.items()) + " TFLOP/s"
                              for op, by_dt in kernels.items()) + ".", ""]
    return lines


def _precision_breakdown(p: dict, s: dict) -> list[str]:
    steps, bsteps, v = p["steps"], p["breakdown_steps"], s["variants"]
    lines: list[str] = []
    rows = []
    for name, o in v.items():
        b = o["breakdown"]
        rows.append([PRECISION_LABELS[name], f"{b['total_s']:.1f}", f"{b['unet_s']:.1f} ({b['unet_s'] / b['unet_calls']:.2f}/call)",
                     f"{b['vae_encode_s']:.2f}", f"{b['vae_decode_s']:.2f}", f"{b['exemplar_s']:.2f}",
                     f"{b['rest_s']:.2f}"])
    lines += [f"### Breakdown: where a {bsteps}-step edit's time goes (medians, seconds)", "",
              fmt_table(["", "total", "UNet", "VAE encode", "VAE decode", "exemplar encoder", "rest"], rows), "",
              f"A {steps}-step edit makes {steps + 1} UNet calls and one VAE encode, decode and exemplar encoding, so "
              f"at {steps} steps the UNet is nearly all of it.", ""]
    return lines


def _precision_agreement(p: dict) -> list[str]:
    steps = p["steps"]
    lines: list[str] = []
    ag = p.get("agreement", {})
    if ag:
        names = {"ours_bf16/ours_fp32": "ours bf16 vs ours fp32", "diffusers_bf16/diffusers_fp32":
                 "diffusers bf16 vs diffusers fp32", "ours_bf16/diffusers_bf16": "ours bf16 vs diffusers bf16",
                 "ours_fp32/diffusers_fp32": "ours fp32 vs diffusers fp32"}
        lines += [f"### bf16 against fp32: the same {steps}-step edit, same weights and noise", "",
                  fmt_table(["", "max abs inside the mask", "mean abs inside the mask"],
                            [[names[k], f"{d['max_abs']:.2e}", f"{d['mean_abs']:.2e}"] for k, d in ag.items()]),
                  "", "0..1 pixels of the pasted-back result; outside the mask the result is the photo, bit for bit, "
                  "in every precision. The weights are random (no download), so these differences are those of "
                  "random networks of the real size: the trained model's may be smaller or larger.", ""]
    return lines


def _precision_fast_paths(s: dict) -> list[str]:
    v = s["variants"]
    lines: list[str] = []
    if "fallbacks" in v.get("ours_bf16", {}):
        o = v["ours_bf16"]
        patched = o["load"].get("fast_path_blocks") or {}
        fb = o["fallbacks"]
        lines += ["### The pack's fast paths in bf16", "",
                  f"Over its {o['checked_calls']} UNet calls (the timed edits of every repetition), the bf16 MODEL's "
                  f"single-token cross-attention handed {fb['single_token']} cross-attention calls to the normal path "
                  f"(0: the fast path at every one), and its shared CFG prefix ran its layers on one half of the batch "
                  f"in {fb['shared_prefix_halved']} of {fb['shared_prefix']} calls (all: shared at every call). The "
                  "worker counts the calls each patch hands to the forward it replaced."
                  + (f" Patched blocks: {patched['single_token']} cross-attentions, {patched['shared_prefix']} "
                     "shared-prefix layers." if patched else ""), ""]
    return lines


def _precision_layout(p: dict, s: dict) -> list[str]:
    size = p["size"]
    lines: list[str] = []
    if "layout" in s:
        lay = s["layout"]
        names = {"unet_s": "UNet call (batch 2)", "vae_encode_s": "VAE encode", "vae_decode_s": "VAE decode"}
        lines += ["### Channels-last in bf16", "",
                  f"The bf16 worker's own modules in each memory order at {size}² (a copy in the other order, so no "
                  f"conversion is timed), median of {len(p['layout'])}:", "",
                  fmt_table(["", "channels-last s", "NCHW s", "channels-last / NCHW"],
                            [[names[k], f"{lay[k]['channels_last']:.2f}", f"{lay[k]['nchw']:.2f}",
                              f"**{lay[k]['ratio']:.3f}**"] for k in names]), ""]
    return lines


def precision_probes_markdown(p: dict) -> list[str]:
    """The kernel and per-precision UNet probes, and what they decide."""
    lines: list[str] = []
    if p.get("kernels"):
        rows = []
        by_cpu = all("cpu_times" in k for k in p["kernels"].values())
        for isa, k in p["kernels"].items():
            for op in ("conv3x3", "linear", "sdpa"):
                t = {dt: med(ts) for dt, ts in k["cpu_times" if by_cpu else "times"][op].items()}
                rows.append([PRECISION_ISAS.get(isa, isa) if op == "conv3x3" else "", op,
                             *(f"{1000 * t[dt]:.1f} ({t[dt] / t['fp32']:.2f}×)" for dt in ("fp32", "bf16", "fp16"))])
        lines += ["### Why bf16, and only with AMX: single kernels", "",
                  "At the UNet's highest resolution of a 512² edit (batch 2, 64², 320 channels): a 3x3 convolution "
                  "(channels-last), the 8192×320 → 1280 linear layer of its feed-forward and the 4096-token "
                  "self-attention (8 heads of 40, torch's SDPA); "
                  + ("CPU milliseconds (both threads together; the precisions interleaved), medians"
                     if by_cpu else "milliseconds, medians") + ", and the ratio to fp32. oneDNN runs the "
                  "convolutions and linear layers; `ONEDNN_MAX_CPU_ISA` holds it to a lower instruction set on the "
                  "same CPU, which stands in for CPUs without AMX (attention is torch's own kernel and is not held).",
                  "", fmt_table(["instruction set", "kernel", "fp32 ms", "bf16 ms", "fp16 ms"], rows), ""]
    if p.get("unet_precisions"):
        labels = {"fp32": "fp32", "bf16_native": "bf16 weights, computed in bf16 (the pack with AMX-BF16)",
                  "bf16_host_cast": "bf16 weights, computed in fp32 (ComfyUI's choice on a CPU)",
                  "fp16_native": "fp16 weights, computed in fp16",
                  "fp16_host_cast": "fp16 weights, computed in fp32 (ComfyUI's and the pack's choice)"}
        rows = []
        for isa, u in p["unet_precisions"].items():
            t = {k: med(ts) for k, ts in u["times"].items()}
            c = {k: med(ts) for k, ts in u.get("cpu_times", {}).items()}
            for k in t:
                i = u["info"][k]
                diff = f"{i['max_abs']:.1e} / {i['mean_abs']:.1e}" if "max_abs" in i and k != "fp32" else ""
                rows.append([PRECISION_ISAS.get(isa, isa) if k == next(iter(t)) else "", labels.get(k, k),
                             f"{t[k]:.2f}", f"**{t[k] / t['fp32']:.2f}**", f"{c[k] / c['fp32']:.2f}" if c else "", diff])
        size = next(iter(p["unet_precisions"].values()))["size"]
        lines += ["### Whole UNet calls per precision", "",
                  f"One UNet call at {size}² (batch 2 as CFG makes it, the pack's patches on), built by the pack's "
                  f"loader in each precision from the same fp32 file, interleaved, median of "
                  f"{len(next(iter(p['unet_precisions'].values()))['times']['fp32'])}; the last "
                  "column is the output's max / mean abs difference from fp32 (output magnitude about 2).", "",
                  fmt_table(["instruction set", "UNet", "s / call", "/ fp32", "CPU time / fp32", "vs fp32 max / mean"],
                            rows), ""]
    lines += [
        "What this decides (`pbe_core/weights/cpu_precision.py`, `nodes/host/model_type.py`):",
        "",
        "- bf16 is computed natively on the CPU only with AMX-BF16 (`lscpu | grep amx_bf16`): there the UNet, the VAE "
        "and the exemplar encoder all run in bf16, the UNet's and VAE's convolution kernels channels-last. Without "
        "AMX (above: AVX-512 BF16 alone, or no bf16 instructions) bf16 convolutions are slower than fp32 ones, so "
        "there `weight_dtype: bf16` keeps ComfyUI's own choice (bf16 weights, computed in fp32: smaller, but slower "
        "than fp32 weights), and fp32 is the fast choice.",
        "- fp16 is never computed natively on a CPU: even with AVX-512 FP16, which oneDNN uses, its convolutions are "
        "slower than fp32 ones. `weight_dtype: fp16` on a CPU keeps fp16 weights computed in fp32 (ComfyUI's choice).",
        "- The default on the CPU stays fp32: bf16 changes the result (above).",
        "",
    ]
    return lines


def precision_ratios_text(report: dict) -> str:
    if "precision" not in report:
        return ""
    s = summarise_precision(report["precision"])
    parts = [f"{k.replace('_', ' ')} edit: {x:.2f}" for k, x in s["ratios"].items()]
    parts += [f"{k.replace('_', ' ')} peak RSS: {x:.2f}" for k, x in s["peak_ratios"].items()]
    return "Precision section (" + f"{report['precision']['steps']}-step edit at {report['precision']['size']}²): " + \
        "; ".join(parts) + "\n"


def ratios_text(s: dict) -> str:
    parts = []
    for n in s["ours_names"]:
        tag = "" if n == "ours" else " [--use-pytorch-cross-attention]"
        parts += [f"end-to-end {size}²{tag}: {row['ratio_total'][n]:.2f}" for size, row in s["sizes"].items()]
        parts += [f"UNet s/call {size}²{tag}: {row['ratio_unet_per_call'][n]:.2f}" for size, row in s["sizes"].items()]
        parts.append(f"peak RSS{tag}: {s['ratio_peak_rss'][n]:.2f}")
    parts.append(f"fast path (UNet, on/off): {s['fast_path']['ratio']:.3f}")
    if "shared_ratio" in s["fast_path"]:
        parts.append(f"shared CFG prefix (UNet, on/off): {s['fast_path']['shared_ratio']:.3f}")
    if "sdpa" in s["fast_path"]:
        parts.append(f"fast path (UNet, on/off) [--use-pytorch-cross-attention]: {s['fast_path']['sdpa']['ratio']:.3f}")
    if "layout" in s:
        parts += [f"channels-last / NCHW, {k[:-2].replace('_', ' ')}: {s['layout'][k]['ratio']:.3f}"
                  for k in ("unet_s", "vae_encode_s", "vae_decode_s")]
    parts += [f"photo {n}² / 512²: {p['ratio']:.2f}" for n, p in s["photo"].items() if n != "512"]
    return "Ratios (ours / diffusers): " + "; ".join(parts) + "\n"


SECTION_KEYS = {
    "precision": ("precision",),
    "main": ("edits", "peak_compared", "agreement", "variants", "load_ours", "load_ours_sdpa", "load_diffusers"),
    "fast_path": ("fast_path",),
    "layout": ("layout",),
    "cache": ("exemplar_cache",),
    "photo": ("photo", "final_ours"),
}


RUN_KEYS = ("commit", "machine", "versions", "started", "args")


def combine(reports: list[dict]) -> dict:
    """One report from several runs: each section comes from the last run that measured it.

    The setup lines (machine, commit, versions, repetitions) are those of the run that measured the main section;
    a note names the run of every other section, which keeps its own arguments (``section_args``)."""
    out = dict(reports[0])
    origin = {section: reports[0] for section in reports[0]["args"]["sections"]}
    commands = [reports[0]["command"]]
    for r in reports[1:]:
        for section in r["args"]["sections"]:
            for k in SECTION_KEYS[section]:
                if k in r:
                    out[k] = r[k]
            origin[section] = r
        commands.append(r["command"] + f"  (sections: {', '.join(r['args']['sections'])})")
    out["command"] = "`; then `".join(commands)
    setup = origin.get("main", reports[0])
    out.update({k: setup[k] for k in RUN_KEYS})
    out["section_args"] = {section: r["args"] for section, r in origin.items()}
    out["notes"] = [
        f"Section {section}: measured in the run of commit {r['commit']}, started {r['started']}, on {r['machine']}, "
        f"{r['args']['reps']} repetitions."
        for section, r in origin.items() if r is not setup and section != "precision"
    ]
    return out


#: an absolute path in a command line (not a URL, not the tail of a relative path)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.+-]+/)*([\w.+-]+)")


def portable(command: str) -> str:
    """``command`` with every absolute path replaced by ``/path/to/NAME``: a report names no folder of the machine
    it ran on (older saved runs recorded them)."""
    return _ABSOLUTE_PATH.sub(lambda m: f"/path/to/{m.group(1)}", command)


def write_report(out: Path, report: dict, command: str) -> None:
    """Write the markdown report; print it, the ratios last."""
    out.parent.mkdir(parents=True, exist_ok=True)
    command = portable(command)
    s = summarise(report) if "edits" in report else None
    text = markdown(report, s, command)
    ratios = precision_ratios_text(report) + (ratios_text(s) if s is not None else "")
    out.write_text(text + "\n## Ratios\n\n" + ratios)
    sys.stdout.write(text + "\n")
    sys.stdout.write(ratios)
