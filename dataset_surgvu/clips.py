"""The torch side of a `load_surgvu` split: a map-style `Dataset` of decoded clips and a resumable epoch sampler.

    from torch.utils.data import DataLoader
    from dataset_surgvu import ClipTransform, EpochShuffleSampler, SurgVUClips, load_surgvu

    split = load_surgvu("/data/surgvu")["train"]
    clips = SurgVUClips(split, ClipTransform(crop_size=256))
    loader = DataLoader(clips, batch_size=4, sampler=EpochShuffleSampler(len(clips), seed=0), num_workers=8)
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler


class SurgVUClips(Dataset):
    """Rows of a `load_surgvu` split turned into model inputs by a `ClipTransform` (decoding happens in workers).

    Each item is the transform's output plus `sample_id`, the row's index in the split: a stable name for the clip
    across processes and epochs (per-clip metrics, replay checks).
    """

    def __init__(self, split, transform):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict:
        return {**self.transform(self.split[index]), "sample_id": torch.tensor(index)}


class EpochShuffleSampler(Sampler):
    """A permutation seeded by (seed, epoch): any epoch's order can be replayed exactly when resuming."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples
