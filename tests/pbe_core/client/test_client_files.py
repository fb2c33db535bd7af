"""The headless client's files without a server: hand-edited workflow files, batch rows with several exemplars, and
the result store (what counts as done, atomic writes that a full or read-only folder cannot leave half done)."""

import codecs
import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from images import png_bytes as _png
from unprivileged import popen_kwargs, unavailable_reason

from pbe_core.client import cli, jobs, results, workflow
from pbe_core.client.errors import ClientError, ResultWriteError

pytestmark = pytest.mark.stdlib

ONE = workflow.API_WORKFLOWS / "pbe_one_node_edit.json"
SEVERAL = workflow.API_WORKFLOWS / "pbe_several_exemplars.json"


def _shipped(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _client(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pbe_core.client", *args], capture_output=True, text=True,
                          cwd=workflow.PACK_DIR, timeout=60, **kw)  # fmt: skip


# --- workflow files -----------------------------------------------------------------------------------------------------
def test_a_byte_order_mark_is_read(tmp_path):
    text = ONE.read_text(encoding="utf-8")
    for name, data in (("utf8.json", codecs.BOM_UTF8 + text.encode()), ("utf16.json", text.encode("utf-16"))):
        (tmp_path / name).write_bytes(data)
        assert workflow.load_workflow(str(tmp_path / name)) == _shipped(ONE)


@pytest.mark.parametrize("where", ["object", "list", "nested"])
def test_a_trailing_comma_is_refused_with_its_line(tmp_path, where):
    lines = json.dumps(_shipped(ONE), indent=2).splitlines()
    if where == "object":  # after the last node: the line before the final "}"
        k = len(lines) - 2
    elif where == "list":  # after the last item of an input's [node, output] link
        k = next(i for i, line in enumerate(lines) if line.strip() == "0")
    else:  # after the last input of the first node
        k = next(i for i, line in enumerate(lines) if line.strip().startswith('"class_type"')) - 2
    lines[k] += ","
    path = tmp_path / "trailing.json"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(json.JSONDecodeError):
        json.loads(path.read_text())  # the oracle: it is not JSON
    with pytest.raises(ClientError) as e:
        workflow.load_workflow(str(path))
    assert str(e.value).startswith(f"{path}: line {k + 1}: a trailing comma"), e.value
    assert "delete that comma" in str(e.value)


@pytest.mark.parametrize("meta", [None, {"title": None}, {"title": 7}, "Source", {}])
def test_null_titles_and_meta_are_untitled(tmp_path, meta):
    prompt = _shipped(SEVERAL)
    prompt["6"]["_meta"] = meta  # the Exemplar Batch: untitled now, everything else as before
    prompt["7"].pop("_meta")  # the sampler
    path = tmp_path / "w.json"
    path.write_text(json.dumps(prompt))
    loaded = workflow.load_workflow(str(path))
    assert workflow.node_title(loaded["6"]) == "" and workflow.node_title(loaded["7"]) == ""
    assert workflow.check_workflow(loaded) == ("2", ["3", "4", "5"])
    settings = jobs.Settings(workflow=loaded, out_dir=tmp_path, sets=[("Save", "filename_prefix", "x")])
    assert workflow.apply_settings(loaded, settings)["8"]["inputs"]["filename_prefix"] == "x"
    prompt["2"]["_meta"] = None  # the Source itself untitled: said so
    path.write_text(json.dumps(prompt))
    with pytest.raises(ClientError, match="0 LoadImage titled 'Source'"):
        workflow.check_workflow(workflow.load_workflow(str(path)))


def test_a_saved_prompt_body_is_unwrapped(tmp_path):
    body = {"prompt": _shipped(ONE), "client_id": "abc", "extra_data": {"extra_pnginfo": {"workflow": {"nodes": []}}}}
    path = tmp_path / "body.json"
    path.write_text(json.dumps(body))
    assert workflow.load_workflow(str(path)) == _shipped(ONE)


@pytest.mark.parametrize("content, message", [
    (b"", "line 1: the file is empty"),
    (b"[1, 2]", "holds a JSON list, not an API workflow"),
    (b'{"1": 5}', "node '1' is a JSON int"),
    (b'{"1": {"inputs": {}}}', "node '1' has no class_type"),
    (b'{"1": {"class_type": "X", "inputs": [1]}}', "node '1' (X): its inputs are a JSON list"),
    (b'{\n  "1": {"class_type": "X"} // a note\n}', "line 2: a comment at column 28"),
    (b"{'1': {}}", "line 1: a single quote"),
    (b'{\n"1": {"class_type": "caf\xe9"}}', "line 2: byte 0xe9 at column 25 is not UTF-8"),
    (b"{}", "has no nodes"),
    (b'{"nodes": [], "links": []}', "is a UI workflow"),
])  # fmt: skip
def test_broken_workflow_files_get_a_message(tmp_path, content, message):
    path = tmp_path / "w.json"
    path.write_bytes(content)
    with pytest.raises(ClientError, match=message.replace("(", r"\(").replace(")", r"\)")):
        workflow.load_workflow(str(path))


def test_no_traceback_reaches_the_user_for_a_workflow_file(tmp_path):
    """The command line, end to end: every file problem is one ``error: FILE: ...`` line and exit status 1."""
    cases = {"comma.json": b'{"1": {"class_type": "X", "inputs": {},},}', "bom.json": codecs.BOM_UTF8 + b"[]",
             "null.json": b'{"1": {"class_type": "LoadImage", "inputs": {}, "_meta": null}}', "dir": None}
    for name, content in cases.items():
        path = tmp_path / name
        path.mkdir() if content is None else path.write_bytes(content)
        r = _client("edit", "a.png", "m.png", "e.png", "--workflow", str(path), "--server", "127.0.0.1:9", "-o",
                    str(tmp_path / "out"))
        assert r.returncode == 1, (name, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.startswith("error: "), (name, r.stderr)
    r = _client("edit", "a.png", "m.png", "e.png", "--workflow", str(tmp_path / "comma.json"), "--server", "x:9",
                "-o", str(tmp_path / "out"))
    column = cases["comma.json"].index(b"},}") + 2  # the first comma after the inputs, counted from 1
    assert f"error: {tmp_path / 'comma.json'}: line 1: a trailing comma at column {column}" in r.stderr


# --- several exemplars ----------------------------------------------------------------------------------------------
def test_csv_rows_with_several_exemplars(tmp_path):
    (tmp_path / "rows.csv").write_bytes(codecs.BOM_UTF8 + textwrap.dedent("""\
        Source,Mask,Exemplar,Exemplar 2,exemplar_3,Seed
        a.png,a_mask.png,e1.png,e2.png,e3.png,5
        b.png,b_mask.png,e1.png,,,
        c.png,c_mask.png,e1.png,,e3.png,1
        d.png,d_mask.png,e1.png,e2.png,e3.png,1,extra
        """).encode())  # a spreadsheet's CSV: a byte-order mark, headers as people type them
    rows = jobs.jobs_from_csv(tmp_path / "rows.csv")
    assert rows[0] == jobs.Job("001_a", tmp_path / "a.png", tmp_path / "a_mask.png",
                               [tmp_path / "e1.png", tmp_path / "e2.png", tmp_path / "e3.png"], 5)  # fmt: skip
    assert rows[1].exemplars == [tmp_path / "e1.png"] and rows[1].seed is None
    assert rows[2][0] == "003_c" and "exemplar2 is empty but a later exemplar column is not" in rows[2][1]
    assert "row 4 (line 5): 7 cells but the header names 6 columns" in rows[3][1]
    # the header's order is free
    (tmp_path / "b.csv").write_text("seed,exemplar2,exemplar,mask,source\n3,y.png,x.png,m.png,s.png\n")
    (row,) = jobs.jobs_from_csv(tmp_path / "b.csv")
    assert (row.source.name, row.mask.name, [p.name for p in row.exemplars], row.seed) == \
        ("s.png", "m.png", ["x.png", "y.png"], 3)  # fmt: skip
    # without a header, a row is source,mask,exemplar[,seed]: more cells are refused with the header to write
    (tmp_path / "c.csv").write_text("a.png,a_mask.png,e1.png,e2.png,5\n")
    ((name, reason),) = jobs.jobs_from_csv(tmp_path / "c.csv")
    assert "add a header row: source,mask,exemplar,exemplar2" in reason
    (tmp_path / "d.csv").write_text("source,mask,exemplar,examplar2\n")
    with pytest.raises(ClientError, match=r"line 1: unknown column 'examplar2'"):
        jobs.jobs_from_csv(tmp_path / "d.csv")


def test_folder_rows_with_several_exemplars(tmp_path):
    names = ["a.png", "a_mask.png", "a_exemplar.jpg", "a_exemplar2.png", "a_exemplar3.webp",
             "b.png", "b_mask.png", "b_exemplar.png", "b_exemplar3.png",
             "c.png", "c_mask.png", "s1.png", "s2.png"]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"")
    rows = jobs.jobs_from_folder(tmp_path, [tmp_path / "s1.png", tmp_path / "s2.png"])
    a, b, c = rows
    assert [p.name for p in a.exemplars] == ["a_exemplar.jpg", "a_exemplar2.png", "a_exemplar3.webp"]
    assert b[0] == "b" and "no b_exemplar2.*" in b[1]
    assert [p.name for p in c.exemplars] == ["s1.png", "s2.png"]  # the shared ones, in the order given


def test_exemplar_is_repeatable_and_a_wrong_count_says_how_to_give_more(tmp_path):
    args = cli.build_parser().parse_args(["batch", "rows", "--exemplar", "a.png", "--exemplar", "b.png"])
    assert args.exemplar == [Path("a.png"), Path("b.png")]
    settings = jobs.Settings(workflow=workflow.load_workflow("pbe_several_exemplars"), out_dir=tmp_path)
    job = jobs.Job("x", tmp_path / "x.png", tmp_path / "m.png", [tmp_path / "e.png"])
    with pytest.raises(ClientError, match="takes 3 exemplars.*--exemplar 3 times.*exemplar, exemplar2"):
        jobs.job_prompt(job, settings)


def test_several_exemplars_are_uploaded_into_their_slots_in_order(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "s.png").write_bytes(_png(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)))
    (tmp_path / "m.png").write_bytes(_png(np.full((40, 60), 255, np.uint8)))
    exemplars = []
    for k in range(3):
        exemplars.append(tmp_path / f"e{k}.png")
        exemplars[-1].write_bytes(_png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    settings = jobs.Settings(workflow=workflow.load_workflow("pbe_several_exemplars"), out_dir=tmp_path)

    class Recording:
        def __init__(self):
            self.uploads = []

        def upload(self, kind, name, data, fields=None):
            self.uploads.append((kind, name, data))
            return {"name": name, "subfolder": "pbe_client", "type": "input"}

    client = Recording()
    prompt = jobs.prepare(client, jobs.Job("s", tmp_path / "s.png", tmp_path / "m.png", exemplars), settings)
    uploaded = {f"pbe_client/{name}": data for _, name, data in client.uploads}
    for slot, path in zip(("3", "4", "5"), exemplars, strict=True):  # Exemplar, Exemplar 2, Exemplar 3
        assert uploaded[prompt[slot]["inputs"]["image"]] == path.read_bytes()


# --- results ----------------------------------------------------------------------------------------------------------
def test_settings_hash_follows_every_part():
    prompt = _shipped(ONE)
    inputs = {"source": b"s", "mask": b"m", "exemplars": [b"e1", b"e2"]}
    key = results.settings_hash(prompt, inputs, {"model_file": [1, 2]})
    assert key == results.settings_hash(json.loads(json.dumps(prompt)), dict(inputs), {"model_file": [1, 2]})
    changed = json.loads(json.dumps(prompt))
    changed["2"]["inputs"]["steps"] = 49
    assert results.settings_hash(changed, inputs, {"model_file": [1, 2]}) != key
    assert results.settings_hash(prompt, {**inputs, "mask": b"M"}, {"model_file": [1, 2]}) != key
    assert results.settings_hash(prompt, {**inputs, "exemplars": [b"e2", b"e1"]}, {"model_file": [1, 2]}) != key
    assert results.settings_hash(prompt, inputs, {"model_file": [1, 3]}) != key


def test_a_result_is_done_only_whole_and_for_its_key(tmp_path):
    store = results.ResultStore(tmp_path / "out")
    data = os.urandom(5000)
    (path,) = store.write("row", "k1", [(".png", data)])
    assert path == tmp_path / "out" / "row.png" and path.read_bytes() == data
    assert store.done("row", "k1") == [path]
    assert store.done("row", "k2") is None  # other settings
    assert store.done("other", "k1") is None
    path.write_bytes(data[:-1])  # cut short
    assert store.done("row", "k1") is None
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, other bytes
    assert store.done("row", "k1") is None
    store.write("row", "k1", [(".png", data)])
    record = json.loads(store.sidecar("row").read_text())
    record["files"][0]["name"] = "../row.png"  # a sidecar never points outside its folder
    store.sidecar("row").write_text(json.dumps(record))
    assert store.done("row", "k1") is None
    store.sidecar("row").write_text("{not json")
    assert store.done("row", "k1") is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["row.pbe.json", "row.png"]  # no .part files


def test_a_row_that_saves_fewer_images_than_before_leaves_no_stale_ones(tmp_path):
    store = results.ResultStore(tmp_path)
    three = store.write("r", "a", [(".png", b"1"), (".png", b"2"), (".png", b"3")])
    assert [p.name for p in three] == ["r_1.png", "r_2.png", "r_3.png"]
    assert store.done("r", "a") == three
    store.write("r", "b", [(".png", b"only")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.pbe.json", "r.png"]


_WRITE_CHILD = """
import resource, sys
from pathlib import Path
from pbe_core.client.results import ResultStore
from pbe_core.client.errors import ResultWriteError
limit = int(sys.argv[2])
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
store = ResultStore(Path(sys.argv[1]))
try:
    store.check_writable()
    store.write("row", "key", [(".png", b"x" * 50000)])
except ResultWriteError as e:
    sys.stdout.write(str(e))
    sys.exit(3)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and capabilities are Linux")
def test_a_failed_write_names_the_folder_and_reason_and_leaves_nothing(tmp_path):
    """Real OS failures, no mock: a file-size limit (RLIMIT_FSIZE, EFBIG, as a full disk stops a write part way:
    the host test also uses a full tmpfs) and a folder without write permission."""
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, "-B", "-c", _WRITE_CHILD, str(out), "16384"], capture_output=True, text=True,
                       cwd=workflow.PACK_DIR, timeout=60)  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith(f"cannot write row.png into {out}: File too large [{errno.errorcode[errno.EFBIG]}]")
    assert list(out.iterdir()) == []
    reason = unavailable_reason()
    assert reason is None, reason
    out.chmod(0o555)
    try:
        r = subprocess.run([sys.executable, "-B", "-c", _WRITE_CHILD, str(out), "0"], capture_output=True,
                           text=True, cwd=workflow.PACK_DIR, timeout=60, **popen_kwargs())  # fmt: skip
    finally:
        out.chmod(0o755)
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith(f"cannot write into the output folder {out}: Permission denied [EACCES]; no permission")
    assert list(out.iterdir()) == []


def test_atomic_write_replaces_whole(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    results.atomic_write(path, b"new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    with pytest.raises(ResultWriteError, match=f"cannot create the folder {path / 'below_a_file'}: Not a directory"):
        results.atomic_write(path / "below_a_file" / "x.json", b"")


def test_a_batch_without_a_server_still_reports_every_row(tmp_path):
    """Nothing listens at the address: the first row fails with the reason, the others are reported not tried, the
    report is written, exit status 2, no traceback."""
    rng = np.random.default_rng(1)
    lines = ["source,mask,exemplar"]
    for k in range(3):
        (tmp_path / f"s{k}.png").write_bytes(_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
        (tmp_path / f"m{k}.png").write_bytes(_png(np.full((16, 16), 255, np.uint8)))
        lines.append(f"s{k}.png,m{k}.png,s0.png")
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        r = _client("batch", str(tmp_path / "rows.csv"), "-o", str(tmp_path / "out"), "--server", f"127.0.0.1:{port}")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    reason = f"cannot reach ComfyUI at http://127.0.0.1:{port}: Connection refused"
    assert [row["error"] for row in report["rows"]] == [reason] + [f"not tried: {reason}"] * 2
    assert r.stderr.count(reason) == 1 and r.stdout.count("not tried (the batch stopped: see the error above)") == 2
    assert (report["succeeded"], report["failed"], report["stopped"]) == (0, 3, reason)


def test_a_rerun_with_every_row_done_needs_no_comfyui(tmp_path):
    """Rows whose result is there for the same settings are skipped before any server is contacted, so a finished
    batch run again starts no ComfyUI (here: --comfyui names no ComfyUI at all). A changed input is done again."""
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        (tmp_path / f"{name}.png").write_bytes(_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
        (tmp_path / f"{name}_mask.png").write_bytes(_png(np.full((16, 16), 255, np.uint8)))
        (tmp_path / f"{name}_exemplar.png").write_bytes(_png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    out = tmp_path / "out"
    settings = jobs.Settings(workflow=workflow.load_workflow("pbe_one_node_edit"), out_dir=out, values={"steps": 3})
    store = results.ResultStore(out)
    for job in jobs.jobs_from_folder(tmp_path):
        store.write(job.name, jobs.job_key(job, settings)[2], [(".png", b"result of " + job.name.encode())])
    args = ["batch", str(tmp_path), "-o", str(out), "--comfyui", str(tmp_path / "no_comfyui_here")]
    r = _client(*args, "--steps", "3")
    assert r.returncode == 0, r.stderr
    assert "2 of 2 rows succeeded (2 already done)" in r.stdout
    assert json.loads((out / "report.json").read_text())["skipped"] == 2
    r = _client(*args, "--steps", "4")  # other settings: the rows need the (missing) ComfyUI
    assert r.returncode == 1 and "is not a ComfyUI folder" in r.stderr, r.stderr
    (tmp_path / "b_exemplar.png").write_bytes(_png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    r = _client(*args, "--steps", "3")  # row b's exemplar changed: b is done again, a skipped
    report = json.loads((out / "report.json").read_text())
    assert [row["status"] for row in report["rows"]] == ["skipped", "failed"]
    # every earlier run's report is kept in reports/, named by the time it was written (a suffix when two share one)
    kept = sorted((out / "reports").iterdir(), key=lambda p: p.stat().st_mtime_ns)  # moved, not rewritten
    assert all(p.name.startswith("report-") and p.suffix == ".json" for p in kept)
    assert [[row["status"] for row in json.loads(p.read_text())["rows"]] for p in kept] == \
        [["skipped", "skipped"], ["failed", "failed"]]  # fmt: skip


def test_broken_csv_files_get_a_message(tmp_path):
    (tmp_path / "latin1.csv").write_bytes(b"source,mask,exemplar\nfoto_\xe9t\xe9.png,m.png,e.png\n")
    with pytest.raises(ClientError, match=r"latin1\.csv: line 2: byte 0xe9 at column 6 is not UTF-8 text"):
        jobs.jobs_from_csv(tmp_path / "latin1.csv")
    (tmp_path / "quote.csv").write_text('source,mask,exemplar\n"a.png,m.png,e.png\n')
    r = _client("batch", str(tmp_path / "quote.csv"), "-o", str(tmp_path / "out"), "--server", "127.0.0.1:9")
    assert "Traceback" not in r.stderr
    (tmp_path / "dup.csv").write_text("source,mask,exemplar,Exemplar 1\n")
    with pytest.raises(ClientError, match=r"line 1: the header names 'exemplar' twice"):
        jobs.jobs_from_csv(tmp_path / "dup.csv")
    r = _client("batch", str(tmp_path / "latin1.csv"), "-o", str(tmp_path / "out"), "--server", "127.0.0.1:9")
    assert r.returncode == 1 and r.stderr.startswith(f"error: {tmp_path / 'latin1.csv'}: line 2:"), r.stderr
