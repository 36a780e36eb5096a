"""Bundled real data for the main job: the handwritten digits that ship inside
scikit-learn (sklearn.datasets.load_digits: 1,797 real 8x8 scans, 16 grey levels).

    images, labels = load_digits(size=32)    # float32 [1797, 1, 32, 32] in [-1, 1], int64 [1797]
    sampler = InfiniteSampler(images, batch_size=64, seed=0)
    batch = next(sampler)                    # [64, 1, 32, 32]

Scaling: a scan pixel p in 0..16 becomes p / 16 * 2 - 1, so blank paper is -1 and full
ink is +1 (the range of the generator's tanh). Resizing is bilinear interpolation
(align_corners=False) of the scaled image; interpolation is a convex combination of
neighbours, so the result stays inside [-1, 1].
"""
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

DATASETS = ("digits",)

#: The scans' grey levels run from 0 to DIGITS_MAX inclusive.
DIGITS_MAX = 16.0


def _require_sklearn():
    try:
        from sklearn import datasets
    except ImportError as exc:  # the only data set we have lives inside scikit-learn
        raise ImportError(
            "the digits data set ships with scikit-learn, which is not installed: "
            "pip install scikit-learn"
        ) from exc
    return datasets


def load_digits(size: int = 32) -> Tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digit scans as (images, labels).

    images: float32 [1797, 1, size, size] in [-1, 1] (bilinearly resized from 8x8);
    labels: int64 [1797], the digit 0..9 each scan shows.
    """
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8 (the scans are 8x8), got {size!r}")
    datasets = _require_sklearn()
    bunch = datasets.load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # [N, 1, 8, 8]
    images = images / DIGITS_MAX * 2 - 1
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    # Interpolation cannot leave [-1, 1] in exact arithmetic; clamp away rounding.
    images = images.clamp_(-1.0, 1.0).contiguous()
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return images, labels


def load(name: str, size: int = 32) -> Tuple[torch.Tensor, torch.Tensor]:
    """A bundled data set by name (only "digits" for now)."""
    if name == "digits":
        return load_digits(size)
    raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


class InfiniteSampler:
    """Endless random mini-batches from an in-memory tensor: each epoch is a fresh
    permutation drawn from a seeded torch.Generator, so a seed fixes the whole stream.
    Batches never straddle epochs (the tail of a permutation that is shorter than a batch
    is dropped), so every batch has exactly batch_size samples.
    """

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int = 0,
                 device: Optional[torch.device] = None, labels: Optional[torch.Tensor] = None):
        n = images.shape[0]
        if not isinstance(batch_size, int) or not 1 <= batch_size <= n:
            raise ValueError(f"batch_size must be an int in [1, {n}] (the data set has {n} samples), "
                             f"got {batch_size!r}")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = labels.to(self.device) if labels is not None else None
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.int64)
        self._pos = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def _indices(self) -> torch.Tensor:
        if self._pos + self.batch_size > self._order.numel():
            self._order = torch.randperm(self.images.shape[0], generator=self.generator)
            self._pos = 0
        idx = self._order[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx.to(self.device)

    def __next__(self) -> torch.Tensor:
        return self.images[self._indices()]

    def next_with_labels(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.labels is None:
            raise ValueError("this sampler was built without labels")
        idx = self._indices()
        return self.images[idx], self.labels[idx]


def make_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int = 0,
                shuffle: bool = True, drop_last: bool = True) -> torch.utils.data.DataLoader:
    """A plain torch DataLoader over (images, labels) with a seeded shuffle."""
    dataset = torch.utils.data.TensorDataset(images, labels)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                       drop_last=drop_last,
                                       generator=torch.Generator().manual_seed(seed))
