"""``score``: the three COCOEE numbers of a folder of results, with intervals, a report and pictures.

1. the benchmark rows (:mod:`.cocoee`) and their results (``manifest.json`` if present, else the official names);
2. CLIP ViT-B/32 (:mod:`.clip_features`): features of every result, for FID and QS;
3. CLIP score per image (:mod:`.clip_score`);
4. QS per image from the GMM (:mod:`.gmm`), when one is given;
5. FID against the reference statistics (:mod:`.fid`, :mod:`.fid_reference`), when a reference is given;
6. Inception FID (:mod:`.inception_fid`), when its weights are given;
7. bootstrap intervals (:mod:`.bootstrap`), ``per_image.csv``, the pictures (:mod:`.figures`), the report (:mod:`.report`).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import bootstrap, cocoee, figures, report
from .clip_features import features_of_files, load_clip, sha256_of
from .clip_score import clip_scores
from .fid import FrechetToReference, feature_statistics, frechet_distance
from .fid_reference import list_images, reference_statistics
from .gmm import QS_MAX, log_likelihood, quality_scores, read_gmm
from .manifest import read_manifest

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ScoreOptions:
    """What ``python -m pbe_core.eval score`` takes (see its ``--help``)."""

    out: Path
    cocoee: Path
    clip: Path
    gmm: Path | None = None
    fid_reference: Path | None = None
    inception_weights: Path | None = None
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 50
    workers: int = 0
    resamples: int = bootstrap.DEFAULT_RESAMPLES
    seed: int = bootstrap.DEFAULT_SEED
    allow_missing: bool = False
    grid_rows: int = 8


def _result_files(opts: ScoreOptions, rows: list[cocoee.CocoeeRow], manifest) -> tuple[list, list[Path], Path]:
    """The rows that have results and those results' paths; refuses missing results unless allowed."""
    results_dir = cocoee.results_folder(opts.out)
    paths = [
        manifest.results.get(r.name, cocoee.result_path(results_dir, r.name)) if manifest else cocoee.result_path(results_dir, r.name)
        for r in rows
    ]
    present = [p.is_file() for p in paths]
    missing = [r.name for r, ok in zip(rows, present, strict=True) if not ok]
    if missing and (not opts.allow_missing or len(missing) == len(rows)):
        raise cocoee.CocoeeError(
            f"{len(missing)} of {len(rows)} results are missing from {results_dir} (e.g. {missing[0]}.png); results "
            f"are named {{id:012d}}.png as scripts/inference_test_bench.py writes them. Generate them, or pass "
            f"--allow-missing to score the others (the numbers are then not comparable with the paper)."
        )
    if missing:
        log.warning("%d results are missing; scoring the other %d", len(missing), len(rows) - len(missing))
    kept = [(r, p) for r, p, ok in zip(rows, paths, present, strict=True) if ok]
    return [r for r, _ in kept], [p for _, p in kept], results_dir


def _metric(value: float, ci: tuple[float, float], key: str, **extra) -> dict:
    out = {"value": value, "ci95": list(ci), "paper": report.PAPER.get(key)}
    if key in report.LEADERBOARD:
        out["leaderboard"] = report.LEADERBOARD[key]
    return {**out, **extra}


def score(opts: ScoreOptions) -> dict:
    """Run the evaluation and write the report files into ``opts.out``; returns the report dict."""
    out = Path(opts.out)
    if not out.is_dir():
        raise cocoee.CocoeeError(f"output folder {out} does not exist; give the folder holding results/ (or the results)")
    # 1. rows and results
    all_rows = cocoee.read_rows(opts.cocoee)
    manifest = read_manifest(out)
    rows, results, results_dir = _result_files(opts, all_rows, manifest)
    notes = []
    if manifest and manifest.mixed_settings:
        notes.append(f"manifest: rows were generated with {len(manifest.mixed_settings)} other settings hash(es)")

    # 2. CLIP and the features of the results
    encoder = load_clip(opts.clip, device=opts.device, dtype=DTYPES[opts.dtype])
    need_features = opts.gmm is not None or opts.fid_reference is not None
    features = features_of_files(encoder, results, opts.batch_size, opts.workers) if need_features else None
    metrics, n = {}, len(rows)
    draws = dict(resamples=opts.resamples, seed=opts.seed)

    # 3. CLIP score
    per_clip = clip_scores(encoder, results, [r.ref for r in rows], [r.mask for r in rows], opts.batch_size)
    metrics["clip_score"] = _metric(float(per_clip.mean()), bootstrap.mean_interval(per_clip, **draws), "clip_score")

    # 4. QS
    per_loglik = per_qs = None
    gmm_info = None
    if opts.gmm is not None:
        params = read_gmm(opts.gmm)
        per_loglik = log_likelihood(params, features)
        per_qs = quality_scores(per_loglik)
        qs100 = 100.0 * per_qs
        clipped = int(np.sum((per_loglik < 0) | (per_loglik > QS_MAX)))
        metrics["qs"] = _metric(float(qs100.mean()), bootstrap.mean_interval(qs100, **draws), "qs",
                                clipped_images=clipped)
        gmm_info = {**params.describe(), "sha256": sha256_of(opts.gmm)}
    else:
        metrics["qs"] = {"skipped": "no --gmm given", "paper": report.PAPER["qs"]}

    # 5. FID (CLIP features)
    ref_info = None
    if opts.fid_reference is not None:
        ref = reference_statistics(encoder, opts.fid_reference, out, opts.batch_size, opts.workers)
        mu, sigma = feature_statistics(features)
        value = frechet_distance(mu, sigma, ref.mu, ref.sigma)
        to_ref = FrechetToReference(ref.mu, ref.sigma)
        ci = bootstrap.interval(lambda idx: to_ref(features[idx]), n, **draws)
        metrics["fid_clip"] = _metric(value, ci, "fid_clip", n_reference=ref.n)
        ref_info = ref.describe()
    else:
        metrics["fid_clip"] = {"skipped": "no --fid-reference given", "paper": report.PAPER["fid_clip"]}

    # 6. Inception FID (optional)
    if opts.inception_weights is not None and opts.fid_reference is not None and Path(opts.fid_reference).is_dir():
        from .inception_fid import InceptionUnavailable, inception_fid

        try:
            value = inception_fid(results, list_images(opts.fid_reference), opts.inception_weights, opts.device,
                                  opts.batch_size)
            metrics["fid_inception"] = {"value": value, "ci95": None, "paper": None}
        except InceptionUnavailable as e:
            log.warning("Inception FID skipped: %s", e)
            metrics["fid_inception"] = {"skipped": str(e), "paper": None}
    elif opts.inception_weights is not None:
        metrics["fid_inception"] = {"skipped": "needs --fid-reference as a folder of images", "paper": None}

    # 7. per-image values, pictures, report
    per_image = out / "per_image.csv"
    with open(per_image, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "result", "clip_score", "gmm_log_likelihood", "qs"])
        for i, (r, p) in enumerate(zip(rows, results, strict=True)):
            w.writerow([r.name, str(p), f"{per_clip[i]:.6f}",
                        "" if per_loglik is None else f"{per_loglik[i]:.6f}", "" if per_qs is None else f"{per_qs[i]:.6f}"])
    hist_path, grid_path = out / "clip_score_histogram.png", out / "sample_grid.png"
    figures.histogram(per_clip, "Per-image CLIP score (box crop vs exemplar, x100)", "CLIP score").save(hist_path)
    order = np.argsort(per_clip, kind="stable")
    picks = order[np.unique(np.linspace(0, n - 1, min(opts.grid_rows, n)).round().astype(int))]
    grid_rows = [figures.GridRow(rows[i].gt, rows[i].mask, rows[i].ref, results[i],
                                 f"{rows[i].name}  CLIP {per_clip[i]:.2f}") for i in picks]
    if grid_rows:
        figures.sample_grid(grid_rows).save(grid_path)
    result = {
        "n_images": n,
        "n_expected": len(all_rows),
        "results_dir": str(results_dir),
        "cocoee_dir": str(opts.cocoee),
        "metrics": metrics,
        "bootstrap": {"resamples": opts.resamples, "seed": opts.seed, "interval": "2.5th-97.5th percentile",
                      "method": "results resampled with replacement, the same draws for every metric; for FID the "
                                "reference statistics are held fixed."},
        "clip_model": encoder.describe(),
        "gmm": gmm_info,
        "fid_reference": ref_info,
        "manifest": manifest.describe() if manifest else None,
        "method": [
            "FID and QS: CLIP ViT-B/32 get_image_features (512-d, the official encode_image) of each whole result "
            "after clip.load's transform (bicubic resize of the shorter side to 224, centre crop, CLIP normalisation).",
            "FID: pytorch-fid's formula (mean, unbiased covariance, scipy sqrtm) against the reference statistics.",
            f"QS: GMM log-likelihood s per image, clip(s / {QS_MAX:g}, 0, 1), mean x 100.",
            "CLIP score: result normalised, cropped to the mask's box (end row/column excluded as in the official "
            "code), bilinear resize to 224 without antialiasing; exemplar squashed to 224x224 (Pillow bicubic); "
            "100 x cosine of the two CLIP embeddings, mean over images.",
            f"CLIP ran in {encoder.describe()['dtype']} (the official tools: fp16 on CUDA).",
        ],
        "notes": notes,
        "files": {"per_image": str(per_image), "histogram": str(hist_path),
                  "grid": str(grid_path) if grid_rows else None},
    }
    md_path, json_path = report.write_report(out, result)
    result["files"].update(report_md=str(md_path), report_json=str(json_path))
    for key, m in metrics.items():
        if "value" in m:
            lo, hi = m.get("ci95") or (None, None)
            ci = "none" if lo is None or not np.isfinite(lo) else f"{lo:.4f} to {hi:.4f}"
            log.info("%s = %.4f (95%% interval %s; paper %s)", key, m["value"], ci, m.get("paper"))
    log.info("report: %s", md_path)
    return result
