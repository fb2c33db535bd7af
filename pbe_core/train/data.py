"""Training samples of the paper's self-supervised scheme, one per (image, box), drawn deterministically.

A sample is addressed by its *position* in an endless stream: position p takes record ``perm_e[p mod N]`` of epoch
``e = p div N`` (a fresh permutation per epoch) and draws all its randomness from ``seed`` and p. The same position
gives the same sample in any worker, on any process and after a resume; :class:`StreamSampler` hands each process
its own positions, so processes never share a sample.

For one record (docs/design/training.md):

1. exemplar: the box crop padded by U{0..10} px per side, augmented (:mod:`.augment`), CLIP-normalised;
2. region: the box extended by up to 40 % of the free space per side (:func:`.masks.extend_box`);
3. a random square crop containing the region, resized to ``image_size`` (bicubic);
4. the region in the crop: a Bezier polygon (p ``bezier_rate``) or the extended rectangle;
5. whether the condition is replaced by the learned vector (p ``drop_rate``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from . import masks
from .annotations import BoxRecord
from .augment import augment_exemplar, exemplar_transform

#: the paper's control-point jitter, in pixels of a 512 px training crop
JITTER_AT_512 = 5.0
#: the largest padding of the exemplar crop, pixels of the source image
EXEMPLAR_PAD = 10


class TrainingSamples(Dataset):
    """``dataset[position]`` -> dict of

    * ``image``    float32 (3, S, S) in [-1, 1]: the square crop (the target)
    * ``keep``     float32 (1, S, S), 1 = keep, 0 = region to fill (PbE's polarity, :mod:`pbe_core.edit.conditioning`)
    * ``exemplar`` float32 (3, E, E), CLIP-normalised (E = ``exemplar_size``, 224 for ViT-L/14)
    * ``drop``     bool (): replace the exemplar condition by the learned vector
    """

    def __init__(self, records: Sequence[BoxRecord], image_size: int = 512, exemplar_size: int = 224, seed: int = 0,
                 drop_rate: float = 0.2, bezier_rate: float = 0.5):
        if not records:
            raise ValueError("No training records: the annotations gave no box in the accepted size range.")
        self.records = list(records)
        self.image_size = image_size
        self.exemplar_size = exemplar_size
        self.seed = seed
        self.drop_rate = drop_rate
        self.bezier_rate = bezier_rate
        self._transform = None  # built in each worker on first use

    def record_index(self, position: int) -> int:
        epoch, i = divmod(position, len(self.records))
        return int(_permutation(self.seed, epoch, len(self.records))[i])

    def condition_dropped(self, position: int) -> bool:
        """Whether sample ``position`` trains the unconditional (learned-vector) branch: probability ``drop_rate``."""
        return bool(np.random.default_rng([self.seed, position, 1]).random() < self.drop_rate)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        from PIL import Image

        if self._transform is None:
            self._transform = exemplar_transform(self.exemplar_size)
        rng = np.random.default_rng([self.seed, position, 0])
        rec = self.records[self.record_index(position)]
        with Image.open(rec.image) as im:
            img = im.convert("RGB")
        w, h = img.size
        box = (rec.box[0] * w, rec.box[1] * h, rec.box[2] * w, rec.box[3] * h)

        pad = rng.integers(0, EXEMPLAR_PAD + 1, size=4)
        ex_box = (
            max(int(np.floor(box[0] - pad[0])), 0),
            max(int(np.floor(box[1] - pad[1])), 0),
            min(int(np.ceil(box[2] + pad[2])), w),
            min(int(np.ceil(box[3] + pad[3])), h),
        )
        exemplar = augment_exemplar(self._transform, np.asarray(img.crop(ex_box)), int(rng.integers(2**31)))

        ext = masks.extend_box(box, w, h, rng)
        crop = masks.square_crop(ext, w, h, rng)
        s = self.image_size
        left, top, side = crop
        src = img.crop((left, top, left + side, top + side)).resize((s, s), Image.BICUBIC)
        image = torch.from_numpy(np.asarray(src, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
        region, _ = masks.region_mask(
            masks.to_crop(ext, crop, s), masks.to_crop(box, crop, s), s, rng, self.bezier_rate, JITTER_AT_512 * s / 512
        )
        keep = torch.from_numpy(~region).float()[None]
        return {"image": image, "keep": keep, "exemplar": exemplar, "drop": torch.tensor(self.condition_dropped(position))}


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 2]).permutation(n)


class StreamSampler(Sampler[int]):
    """Endless positions for one process: batch t of process ``rank`` (of ``world``) holds positions
    ``(t * world + rank) * batch_size + b``, b < ``batch_size``, for t = ``start_batch``, ``start_batch + 1``, ...

    Resuming after k micro-batches is ``start_batch = k``: the stream continues exactly where it stopped.
    """

    def __init__(self, batch_size: int, start_batch: int = 0, rank: int = 0, world: int = 1):
        self.batch_size, self.start_batch, self.rank, self.world = batch_size, start_batch, rank, world

    def __iter__(self) -> Iterator[int]:
        t = self.start_batch
        while True:
            base = (t * self.world + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)
            t += 1
