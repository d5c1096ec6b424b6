"""The torch side of a `load_surgvu` split: a map-style `Dataset` of decoded clips and a resumable epoch sampler.

    from torch.utils.data import DataLoader
    from dataset_surgvu import ClipTransform, EpochShuffleSampler, SurgVUClips, collate_clips, load_surgvu

    split = load_surgvu("/data/surgvu")["train"]
    clips = SurgVUClips(split, ClipTransform(crop_size=256))
    loader = DataLoader(clips, batch_size=4, sampler=EpochShuffleSampler(len(clips), seed=0), num_workers=8,
                        collate_fn=collate_clips)

A clip whose video cannot be decoded (a file cut or rewritten while a run goes on) does not stop the loader: the
dataset gives a `BrokenClip` in its place and `collate_clips` leaves it out of the batch, listing it under
`broken_clips`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import torch
from torch.utils.data import Dataset, Sampler, default_collate

from .video import CorruptVideoError, FrameUnavailableError


logger = logging.getLogger(__name__)


def decode_errors() -> tuple[type[Exception], ...]:
    """What a clip whose video broke raises: the named errors of dataset_surgvu.video, and PyAV's own `FFmpegError`
    when one gets past them (opening a container that the probe still read)."""
    import av

    return (FrameUnavailableError, CorruptVideoError, av.error.FFmpegError)


@dataclasses.dataclass(frozen=True)
class BrokenClip:
    """A dataset item that could not be decoded: which file, why, and the row's index in the split."""

    file: str
    message: str
    sample_id: int


def collate_clips(items: list) -> dict:
    """`default_collate` of the decoded items; the broken ones are left out and listed as `broken_clips`, a list of
    (file, message) pairs, the key present only when one is. A batch with no decoded item holds only that key."""
    broken = [item for item in items if isinstance(item, BrokenClip)]
    if not broken:
        return default_collate(items)
    decoded = [item for item in items if not isinstance(item, BrokenClip)]
    batch = default_collate(decoded) if decoded else {}
    batch["broken_clips"] = [(item.file, item.message) for item in broken]
    return batch


def batch_size(batch: dict) -> int:
    """The decoded clips of a `collate_clips` batch (0 when all of them broke)."""
    return len(batch["sample_id"]) if "sample_id" in batch else 0


class BrokenFiles:
    """The clips that failed to decode, counted per file; each file is named in one warning (`warn`, by default this
    module's logger), the first time only."""

    def __init__(self, warn: Callable[[str], None] | None = None):
        self.clips: dict[str, int] = {}
        self.warn = warn or logger.warning

    def add(self, broken: list[tuple[str, str]]) -> None:
        for file, message in broken:
            if file not in self.clips:
                self.warn(f"{file}: cannot be decoded, its clips are skipped ({message})")
                self.clips[file] = 0
            self.clips[file] += 1

    @property
    def count(self) -> int:
        return sum(self.clips.values())

    def summary(self) -> str:
        """The files and their skipped clips, in one line."""
        return "; ".join(f"{file} ({count} clip{'s' if count != 1 else ''})" for file, count in self.clips.items())


class SurgVUClips(Dataset):
    """Rows of a `load_surgvu` split turned into model inputs by a `ClipTransform` (decoding happens in workers).

    Each item is the transform's output plus `sample_id`, the row's index in the split: a stable name for the clip
    across processes and epochs (per-clip metrics, replay checks). A clip that fails to decode is a `BrokenClip`
    (batch with `collate_clips`).
    """

    def __init__(self, split, transform):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict | BrokenClip:
        row = self.split[index]
        try:
            item = self.transform(row)
        except decode_errors() as error:
            file = str(row["video_path"])
            return BrokenClip(file, str(error).removeprefix(f"{file}: "), index)
        return {**item, "sample_id": torch.tensor(index)}


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
