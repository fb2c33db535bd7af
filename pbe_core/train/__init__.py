"""Fine-tune Paint by Example on your own images with the paper's self-supervised scheme.

    python -m pbe_core.train CONFIG.toml [key=value ...]

The paper's recipe (Yang et al. 2023, section 3; docs/design/training.md): cut an object out of a photo by its box,
augment it into the exemplar, hide a jittered region around the box in the photo, and train the model to paint the
object back from the exemplar. Modules, one job each:

* :mod:`.config`      the settings, a config file plus ``key=value`` overrides
* :mod:`.annotations` boxes from COCO JSON, Open Images CSV or one text file per image; the 2-80 % area filter
* :mod:`.masks`       extended box, Bezier-curve polygon, square crop (pure numpy)
* :mod:`.augment`     the exemplar augmentations (albumentations)
* :mod:`.data`        one training sample per (image, box), deterministic per draw; the sampler
* :mod:`.model`       initialise from SD-1.x or a PbE checkpoint; the trainable and frozen parts; export
* :mod:`.loop`        the training loop (accelerate), checkpoints, resume
* :mod:`.cli`         the command line

Training needs the ``train`` extra of ``pyproject.toml`` (accelerate, albumentations, diffusers, pillow); importing
this package, :mod:`.config` and :mod:`.cli` does not, and the ComfyUI nodes never import it.
"""
