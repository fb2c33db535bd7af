"""The four shared workflows as data: nodes, widget values, links, layout and the note each one carries.

``tools/build_workflows.py`` turns every spec into both files: the UI workflow (``workflows/TITLE.json``, built, laid
out in the spec's columns and serialised by the real ComfyUI frontend) and the API prompt (``workflows/api/NAME.json``,
built here from the spec and the live ``/object_info``'s defaults). The offline test converts each UI file back to API form and compares, so the
two cannot drift apart.

Node titles are the contract with the headless client (``pbe_core.client``): it puts the uploaded files into the
``LoadImage`` nodes titled ``Source`` and ``Exemplar`` (``Exemplar 2``, ``Exemplar 3``, ... for more), and downloads
what ``SaveImage`` nodes write. The mask travels in the source's alpha, as ComfyUI's mask editor leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: the official checkpoint's file name (Fantasy-Studio/Paint-by-Example on Hugging Face)
MODEL_FILE = "model.ckpt"
#: what the frontend reads to name a missing model, its folder and where to get it: the loader node's
#: ``properties.models`` (entries name/url/directory, matched to the widget's value) and the workflow's ``models``
MODEL = {
    "name": MODEL_FILE,
    "url": "https://huggingface.co/Fantasy-Studio/Paint-by-Example/resolve/main/model.ckpt",
    "directory": "paint_by_example",  # nodes/host/models_folder.py: FOLDER
}
#: ships with every ComfyUI (input/example.png), so a template opens without a missing-file error
PLACEHOLDER_IMAGE = "example.png"

MODEL_NOTE = (
    "Model: put Paint-by-Example's model.ckpt (Hugging Face: Fantasy-Studio/Paint-by-Example), a .safetensors "
    "conversion of it (python -m pbe_core.convert) or the diffusers folder "
    "into ComfyUI/models/paint_by_example/, refresh, and pick it in 'Load Paint-by-Example Model'."
)
MASK_NOTE = (
    "Mask: right-click the Source image -> 'Open in MaskEditor' and paint the region to replace (white = replace). "
    "Without a painted mask the edit stops with an explanation."
)


@dataclass
class Node:
    key: str
    type: str
    #: the layout column (0 = left); within a column nodes are stacked in the order of the spec
    col: int
    widgets: dict = field(default_factory=dict)
    title: str | None = None
    size: tuple[int, int] | None = None
    #: free canvas kept below the node (where a Save Image node shows its results after a run)
    room_below: int = 0


@dataclass
class Workflow:
    #: the API prompt's file name (workflows/api/NAME.json), the name the client and the tests use
    name: str
    #: the template browser's title: the UI workflow's file name (workflows/TITLE.json); the browser shows it as the
    #: title and, with '-' and '_' as spaces, as the description, and newer hosts list the files sorted by name
    title: str
    summary: str
    nodes: list[Node]
    #: (from node key, output slot, to node key, input name)
    links: list[tuple[str, int, str, str]]
    note: str
    note_col: int
    note_size: tuple[int, int] = (420, 330)


def _loader(col=0):
    return Node("load", "PBE_LoadModel", col, {"model_name": MODEL_FILE})


def _image(key, title, col=0):
    return Node(key, "LoadImage", col, {"image": PLACEHOLDER_IMAGE}, title=title)


def _save(col, prefix):
    return Node("save", "SaveImage", col, {"filename_prefix": prefix}, title="Save", room_below=320)


def _sampler_links(exemplar=("ex", 0)):
    return [
        ("load", 0, "pbe", "model"),
        ("load", 1, "pbe", "encoder"),
        ("load", 2, "pbe", "vae"),
        ("src", 0, "pbe", "image"),
        ("src", 1, "pbe", "mask"),
        (exemplar[0], exemplar[1], "pbe", "exemplar"),
        ("pbe", 0, "save", "images"),
    ]


ONE_NODE = Workflow(
    name="pbe_one_node_edit",
    title="Paint by Example 1, one-node edit",
    summary="The whole edit in one node",
    nodes=[
        _loader(),
        _image("src", "Source"),
        _image("ex", "Exemplar"),
        Node("pbe", "PBE_Sampler", 1, {"seed": 0, "steps": 50, "cfg": 5.0, "sampler_name": "reference"}),
        _save(2, "paint_by_example/edit"),
    ],
    links=_sampler_links(),
    note=(
        "Paint by Example, one node.\n\n"
        "Paints the object of the Exemplar image into the masked region of the Source photo. 'Paint by Example' does "
        "it all: encodes the exemplar, samples with the official PLMS ('reference', 50 steps, cfg 5) and pastes the "
        "result back, so every pixel outside the (grown, feathered) mask is exactly the source's.\n\n"
        f"{MASK_NOTE}\n\n{MODEL_NOTE}\n\n"
        "working_size 512: the model edits a window around the mask at 512 px, so a photo of any size works."
    ),
    note_col=2,
)

MODULAR = Workflow(
    name="pbe_modular_graph",
    title="Paint by Example 2, modular graph",
    summary="The modular graph with KSampler, masked in the mask editor",
    nodes=[
        _loader(),
        _image("src", "Source"),
        _image("ex", "Exemplar"),
        Node("enc", "PBE_ExemplarEncode", 1, {"preprocess": "squash"}),
        Node("cond", "PBE_InpaintConditioning", 1),
        Node(
            "sample",
            "KSampler",
            2,
            {"seed": 0, "steps": 50, "cfg": 5.0, "sampler_name": "ddim", "scheduler": "ddim_uniform", "denoise": 1.0},
        ),
        Node("decode", "VAEDecode", 3),
        Node("paste", "ImageCompositeMasked", 3, {"x": 0, "y": 0, "resize_source": False}, title="Paste back"),
        _save(4, "paint_by_example/modular"),
    ],
    links=[
        ("load", 1, "enc", "encoder"),
        ("ex", 0, "enc", "exemplar"),
        ("enc", 0, "cond", "positive"),
        ("enc", 1, "cond", "negative"),
        ("load", 2, "cond", "vae"),
        ("src", 0, "cond", "image"),
        ("src", 1, "cond", "mask"),
        ("load", 0, "sample", "model"),
        ("cond", 0, "sample", "positive"),
        ("cond", 1, "sample", "negative"),
        ("cond", 2, "sample", "latent_image"),
        ("sample", 0, "decode", "samples"),
        ("load", 2, "decode", "vae"),
        ("src", 0, "paste", "destination"),
        ("decode", 0, "paste", "source"),
        ("src", 1, "paste", "mask"),
        ("paste", 0, "save", "images"),
    ],
    note=(
        "Paint by Example, modular.\n\n"
        "Load Paint-by-Example Model gives a ComfyUI MODEL, the exemplar encoder and the VAE. Exemplar Encode turns "
        "the exemplar into the positive/negative conditioning; Inpaint Conditioning adds the masked source and the "
        "mask and gives the LATENT. Any ComfyUI sampler works: ddim + ddim_uniform is closest to the official "
        "sampler. 'Paste back' puts the decoded edit into the source through the mask, so the rest of the photo "
        "stays as it was.\n\n"
        f"{MASK_NOTE}\n\n{MODEL_NOTE}\n\n"
        "The source is edited at its own size: keep it near 512 px (or use the one-node graph's working_size)."
    ),
    note_col=4,
    note_size=(420, 420),
)

HIGH_RES = Workflow(
    name="pbe_high_resolution",
    title="Paint by Example 3, large photo",
    summary="A high-resolution photo, edited through crop-and-stitch",
    nodes=[
        _loader(),
        _image("src", "Source"),
        _image("ex", "Exemplar"),
        Node(
            "pbe",
            "PBE_Sampler",
            1,
            {
                "seed": 0, "steps": 50, "cfg": 5.0, "sampler_name": "reference", "mask_grow": 8, "mask_feather": 16,
                "working_size": 512, "context_margin": 0.5, "window_shape": "square",
            },
        ),
        _save(2, "paint_by_example/high_res"),
    ],
    links=_sampler_links(),
    note=(
        "Paint by Example on a large photo (crop-and-stitch).\n\n"
        "The model was trained on 512 px crops. With working_size 512 the node cuts a square window around each "
        "masked region (context_margin 0.5: context around the mask of half the mask box's long side), scales it to 512 px, "
        "edits it, scales it back and stitches it in through the feathered mask (mask_grow 8, mask_feather 16). "
        "A 6000 x 4000 photo keeps its size, and every pixel away from the mask stays untouched.\n\n"
        f"{MASK_NOTE}\n\n{MODEL_NOTE}"
    ),
    note_col=2,
)

SEVERAL_EXEMPLARS = Workflow(
    name="pbe_several_exemplars",
    title="Paint by Example 4, several exemplars",
    summary="Several exemplars into one scene, one result each (batch)",
    nodes=[
        _loader(),
        _image("src", "Source"),
        _image("ex", "Exemplar", 1),
        _image("ex2", "Exemplar 2", 1),
        _image("ex3", "Exemplar 3", 1),
        Node("batch", "PBE_ExemplarBatch", 2, {"preprocess": "squash"}),
        Node("pbe", "PBE_Sampler", 3, {"seed": 0, "steps": 50, "cfg": 5.0, "sampler_name": "reference"}),
        _save(4, "paint_by_example/exemplars"),
    ],
    links=[
        ("ex", 0, "batch", "exemplar"),
        ("ex2", 0, "batch", "exemplar_2"),
        ("ex3", 0, "batch", "exemplar_3"),
        *_sampler_links(exemplar=("batch", 0)),
    ],
    note=(
        "Paint by Example: several exemplars into one scene.\n\n"
        "Three exemplars are tried in the same masked region of one photo, in one run: the node takes a batch of "
        "exemplars and gives one result per exemplar (3 images), from one seed (each result gets its own noise "
        "from it, as in a KSampler batch; the first is the edit the first exemplar gives alone).\n\n"
        "Exemplar Batch brings each exemplar to the 224 x 224 pixels the model sees (squash, as the encoder does), "
        "so photos of different sizes can share a batch, each encoded exactly as it would be alone. It "
        "takes up to four; for more, feed one Exemplar Batch into another.\n\n"
        f"{MASK_NOTE}\n\n{MODEL_NOTE}"
    ),
    note_col=4,
    note_size=(420, 420),
)

WORKFLOWS = [ONE_NODE, MODULAR, HIGH_RES, SEVERAL_EXEMPLARS]
