"""The headless client (``python -m pbe_core.client``) against the live headless ComfyUI, as a user runs it."""

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from comfy_host import REPO
from host_util import BOX, SIZE, make_photo, png_bytes

pytestmark = pytest.mark.host

#: tiny-model settings: few steps, edit the 128-px source whole (the tiny UNet wants sides that are multiples of 64)
TINY = ["--model", "original.ckpt", "--steps", "2", "--set", "Paint by Example.working_size=0"]


def client(server, *args, timeout=600):
    cmd = [sys.executable, "-m", "pbe_core.client", *args, "--server", f"127.0.0.1:{server.port}"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _photos(folder: Path, n: int) -> list[tuple[Path, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    y0, y1, x0, x1 = BOX
    for k in range(n):
        src, mask = folder / f"photo{k}.png", folder / f"photo{k}_mask.png"
        src.write_bytes(png_bytes(make_photo(SIZE, SIZE, 100 + k)))
        m = np.zeros((SIZE, SIZE), np.uint8)
        m[y0:y1, x0:x1] = 255
        mask.write_bytes(png_bytes(m))
        out.append((src, mask))
    return out


@pytest.fixture
def exemplar(tmp_path):
    path = tmp_path / "exemplar.jpg"
    from PIL import Image

    Image.fromarray(make_photo(224, 224, 7)).save(path, quality=95)
    return path


def test_batch_of_five_with_one_broken_row(comfy_server, tmp_path, exemplar):
    """5 CSV rows, row 3 with an all-black mask: 4 results, and the report names row 3 with the server's reason."""
    photos = _photos(tmp_path / "in", 5)
    broken_src, broken_mask = photos[2]
    broken_mask.write_bytes(png_bytes(np.zeros((SIZE, SIZE), np.uint8)))
    rows = ["source,mask,exemplar,seed"] + [
        f"in/{s.name},in/{m.name},{exemplar.name},{k}" for k, (s, m) in enumerate(photos)
    ]
    (tmp_path / "rows.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    r = client(comfy_server, "batch", str(tmp_path / "rows.csv"), "-o", str(out), *TINY)
    assert r.returncode == 1, r.stderr
    results = sorted(p.name for p in out.glob("*.png"))
    assert len(results) == 4, (results, r.stdout, r.stderr)
    assert "003_photo2.png" not in results
    report = json.loads((out / "report.json").read_text())
    assert (report["succeeded"], report["failed"]) == (4, 1)
    (bad,) = [row for row in report["rows"] if not row["ok"]]
    assert bad["name"] == "003_photo2"
    # the server's reason: PBE_Sampler's own error message, relayed from the execution_error
    assert "PBE_Sampler" in bad["error"] and "Mask is empty" in bad["error"]
    assert "4 of 5 rows succeeded" in r.stdout and "FAILED 003_photo2" in r.stdout
    assert "[" in r.stderr and "2/2" in r.stderr  # progress from /ws
    # the results are edits: inside the region they differ from the source, outside (beyond the feather) they don't
    from PIL import Image

    src = np.asarray(Image.open(photos[0][0])).astype(int)
    res = np.asarray(Image.open(out / "001_photo0.png")).astype(int)
    y0, y1, x0, x1 = BOX
    far = np.ones((SIZE, SIZE), bool)
    far[y0 - 9:y1 + 9, x0 - 9:x1 + 9] = False
    assert np.array_equal(res[far], src[far])
    assert np.abs(res[y0:y1, x0:x1] - src[y0:y1, x0:x1]).mean() > 1


def test_folder_batch_skips_rows_without_a_mask(comfy_server, tmp_path, exemplar):
    photos = _photos(tmp_path / "in", 2)
    photos[1][1].unlink()
    r = client(comfy_server, "batch", str(tmp_path / "in"), "--exemplar", str(exemplar), "-o", str(tmp_path / "out"),
               "--no-progress", *TINY)
    assert r.returncode == 1
    assert (tmp_path / "out" / "photo0.png").is_file()
    assert "FAILED photo1: no mask: expected photo1_mask.png" in r.stdout


def test_edit_with_the_modular_workflow_and_overrides(comfy_server, tmp_path, exemplar):
    (src, mask), = _photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    r = client(comfy_server, "edit", str(src), str(mask), str(exemplar), "-o", str(out), "--workflow",
               "pbe_modular_graph", "--model", "original.ckpt", "--steps", "2", "--cfg", "3.5", "--sampler", "euler",
               "--seed", "11", "--client-id", f"pbe-test-{uuid.uuid4().hex[:6]}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out / "photo0.png")
    assert (out / "photo0.png").is_file()


def test_several_exemplars_give_one_result_each(comfy_server, tmp_path, exemplar):
    (src, mask), = _photos(tmp_path / "in", 1)
    r = client(comfy_server, "edit", str(src), str(mask), str(exemplar), str(exemplar), str(exemplar),
               "-o", str(tmp_path / "out"), "--workflow", "pbe_several_exemplars", *TINY)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"photo0_{k}.png" for k in (1, 2, 3)]


def test_errors_exit_non_zero_with_the_servers_message(comfy_server, tmp_path, exemplar):
    (src, mask), = _photos(tmp_path / "in", 1)
    r = client(comfy_server, "edit", str(src), str(mask), str(exemplar), "--model", "missing.safetensors",
               "-o", str(tmp_path / "out"))
    assert r.returncode == 1
    # the validation error (HTTP 400, node_errors) as the server words it
    assert "PBE_LoadModel" in r.stderr and "missing.safetensors" in r.stderr and "was not found" in r.stderr
    # a mask of the wrong size is caught before anything is queued
    (tmp_path / "small_mask.png").write_bytes(png_bytes(np.full((64, 64), 255, np.uint8)))
    r = client(comfy_server, "edit", str(src), str(tmp_path / "small_mask.png"), str(exemplar), *TINY)
    assert r.returncode == 1 and "is 64x64 but the source" in r.stderr
    # an unreachable server
    r = subprocess.run([sys.executable, "-m", "pbe_core.client", "edit", str(src), str(mask), str(exemplar),
                        "--server", "127.0.0.1:9"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot reach ComfyUI" in r.stderr


def test_timeout_cancels_the_prompt_and_the_server_goes_on(comfy_server, tmp_path, exemplar):
    (src, mask), = _photos(tmp_path / "in", 1)
    slow = ["--model", "original.ckpt", "--steps", "999", "--set", "Paint by Example.working_size=0"]
    r = client(comfy_server, "edit", str(src), str(mask), str(exemplar), "--timeout", "3", "--no-progress", *slow,
               "-o", str(tmp_path / "slow"))
    assert r.returncode == 1 and "timed out after 3 s" in r.stderr
    r = client(comfy_server, "edit", str(src), str(mask), str(exemplar), "-o", str(tmp_path / "out"), *TINY)
    assert r.returncode == 0, r.stderr


def _private_servers() -> list[int]:
    """Pids of running private ComfyUIs of this pack (their --base-directory is a pbe-comfyui-* folder)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"main.py" in cmd and any(b"pbe-comfyui-" in c for c in cmd):
                pids.append(int(d))
    return pids


def test_one_command_edits_a_photo_with_a_private_comfyui(tmp_path, exemplar, fixture_paths):
    """The README's edit command: no server running; --comfyui starts a private one (here without --cpu: it finds
    no GPU and starts again with --cpu, as it says), edits, stops it, and leaves only the result."""
    (src, mask), = _photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    before = set(_private_servers())
    folders = set(Path(tempfile.gettempdir()).glob("pbe-comfyui-*"))
    r = subprocess.run(
        [sys.executable, "-m", "pbe_core.client", "edit", str(src), str(mask), str(exemplar), "--model",
         str(fixture_paths["original.ckpt"]), "--comfyui", os.environ["COMFYUI_PATH"], "-o", str(out),
         "--steps", "2", "--set", "Paint by Example.working_size=0"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.strip() == str(out / "photo0.png")
    assert [p.name for p in out.iterdir()] == ["photo0.png"]
    assert "starting a private ComfyUI" in r.stderr and "ComfyUI is ready after" in r.stderr
    assert "[" in r.stderr and "2/2" in r.stderr  # sampling progress from /ws
    assert set(_private_servers()) <= before  # no ComfyUI left running
    assert set(Path(tempfile.gettempdir()).glob("pbe-comfyui-*")) <= folders  # nor its folder


def test_without_a_comfyui_the_client_says_what_to_give(tmp_path, exemplar):
    (src, mask), = _photos(tmp_path / "in", 1)
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    r = subprocess.run([sys.executable, "-m", "pbe_core.client", "edit", str(src), str(mask), str(exemplar)],
                       cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1
    assert "no ComfyUI to use: give --comfyui /path/to/ComfyUI" in r.stderr and "--server HOST:PORT" in r.stderr
