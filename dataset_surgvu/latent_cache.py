"""A latent cache for frozen-encoder training: each clip is decoded, preprocessed and encoded once, then read back.

With a frozen encoder a clip's latents never change, so every epoch after the first can skip video decoding and the
V-JEPA 2 forward pass. One cache directory holds one split's clips; a run's caches live under one root, in
`<root>/<split>/<dataset fingerprint>` (`latent_cache_dir`: the training's overlapping clips and the evaluation's keep
each their own):

    manifest.json               the key, the layout and every shard's checksum; written last, by one process
    shard-00000.safetensors     `latents` (clips, steps, tokens, dim) in float16, or int8 with `scales`
    shard-00000.json            the shard's completion record: its key digest, clip count, SHA-256, size and mtime

Shards are written atomically (temporary file, then rename) and count as done only once their record exists, so a
build killed half way resumes with the missing shards and a half-written shard is never read. A shard is hashed once,
when written; its record keeps the file's size and modification time (ns) beside the hash. Every build, and the
evaluation before it reads a cache, checks the finished shards against their records: by default (`verify="changed"`)
only a shard whose size or mtime moved is hashed again, so a run over an unchanged 6 TB cache reads no shard bytes;
`verify="full"` hashes them all, which also finds bytes changed in place with size and mtime kept. A build rewrites
the shards that do not match. The key (encoder weights, preprocessing, dataset fingerprint, precision) decides whether
a cache fits a run: a changed key rebuilds. Reading opens the shards memory-mapped (`safetensors.safe_open`) and
copies out one clip at a time.

This module holds the format (key, shard writing, verification, the manifest and the reader) and what a run does with
it, from plain values: whether the cache can serve it (`latent_cache_off_reason`), its key (`latent_cache_key`), the
build with a model and an `accelerate.Accelerator` (`build_latent_cache`) and the cached clip datasets of every split
(`cached_clip_datasets`, under `latent_cache_root`). The training scripts and scripts/cache_latents.py call the same
functions, so a cache built ahead of a run is the one the run looks for.

    key = latent_cache_key(model, split, transform, fps=4.0, frames_per_clip=8, precision="float16", autocast="no")
    cache = build_latent_cache(accelerator, model, split, transform, "cache/train", key, shard_size=128,
                               batch_size=4, num_workers=8)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Subset

from .clips import BrokenClip, BrokenFiles, SurgVUClips, collate_clips


logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
PRECISIONS = ("float16", "int8")
VERIFY_MODES = ("changed", "full")  # re-hash the shards whose size or mtime moved, or every shard
_INT8_MAX = 127.0


class LatentCacheError(RuntimeError):
    """A latent cache cannot be used: missing or incomplete manifest, wrong key, or a shard that does not verify."""


@dataclasses.dataclass(frozen=True)
class LatentCacheKey:
    """Everything a cached latent depends on. Two runs may share a cache only when their keys are equal."""

    encoder_hash: str  # SHA-256 of the encoder's weights (`module_fingerprint`)
    preprocessing: dict  # crop size, mean and std, fps, frames per clip and per step, latent normalization
    dataset_fingerprint: str  # the split's `datasets` fingerprint: its rows, crop boxes included
    precision: str  # "float16" or "int8"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def changes_from(self, other: dict) -> list[str]:
        """The names of the fields that differ from an older key (as stored in a manifest)."""
        mine = self.to_dict()
        return sorted(name for name in mine if mine[name] != other.get(name))


def module_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes): the identity of an encoder's weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def num_shards(num_clips: int, shard_size: int) -> int:
    return math.ceil(num_clips / shard_size)


def shard_clips(shard: int, num_clips: int, shard_size: int) -> range:
    return range(shard * shard_size, min((shard + 1) * shard_size, num_clips))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def file_stat(path: Path) -> dict:
    """A file's size and modification time (ns), as a shard's record keeps them."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def shard_problem(path: Path, stat: dict, record: dict, verify: str) -> str | None:
    """What is wrong with a shard file whose `file_stat` is `stat`, against its `record` (the shard's completion
    record, or its manifest entry): None when it is intact.

    With `verify="changed"` a file whose size and mtime are the recorded ones is trusted without reading it, and only
    the others are hashed: a file rewritten in place with its size kept and its mtime restored (`os.utime`, or
    within one tick of the filesystem's clock) passes. `verify="full"` hashes every file.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    if "size" in record and stat["size"] != record["size"]:
        return f"size {stat['size']:,} B, recorded {record['size']:,} B (corrupted)"
    if verify == "changed" and stat == {"size": record.get("size"), "mtime_ns": record.get("mtime_ns")}:
        return None
    if file_sha256(path) != record.get("sha256"):
        return "checksum mismatch (corrupted)"
    return None


def _write_json(path: Path, value: dict) -> None:
    partial = path.with_name(f".partial-{path.name}")
    partial.write_text(json.dumps(value, indent=1))
    os.replace(partial, path)


# --------------------------------------------------------------------------------------------------------------------
# Storage precision
# --------------------------------------------------------------------------------------------------------------------
def quantize(latents: torch.Tensor, precision: str) -> dict[str, torch.Tensor]:
    """Latents `(..., dim)` as stored: float16, or int8 with one float32 scale per token (symmetric, max-abs)."""
    latents = latents.detach().float().cpu()
    if precision == "float16":
        return {"latents": latents.to(torch.float16).contiguous()}
    if precision == "int8":
        scales = latents.abs().amax(dim=-1).clamp(min=1e-12) / _INT8_MAX  # (..., ) one per token
        values = torch.round(latents / scales[..., None]).clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
        return {"latents": values.contiguous(), "scales": scales.contiguous()}
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def dequantize(stored: dict[str, torch.Tensor]) -> torch.Tensor:
    latents = stored["latents"]
    if "scales" in stored:
        return latents.float() * stored["scales"].float()[..., None]
    return latents.float()


def bytes_per_clip(latent_shape: tuple[int, ...], precision: str) -> int:
    """Stored bytes of one clip of latents `(steps, tokens, dim)`."""
    steps, tokens, dim = latent_shape
    if precision == "float16":
        return steps * tokens * dim * 2
    return steps * tokens * (dim + 4)  # int8 values and one float32 scale per token


# --------------------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------------------
class LatentCacheBuilder:
    """Writes the shards of one cache directory; several processes may each write their share.

    Usage: `pending = builder.prepare(rank, world)` (on every process, after rank 0 ran `builder.reset_if_stale()`),
    then `builder.write_shard(shard, latents)` for each pending shard, then, once every process is done, rank 0
    calls `builder.finish()`, which writes the manifest.
    """

    def __init__(self, directory, key: LatentCacheKey, num_clips: int, shard_size: int = 256):
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.directory = Path(directory)
        self.key = key
        self.num_clips = num_clips
        self.shard_size = shard_size

    @property
    def num_shards(self) -> int:
        return num_shards(self.num_clips, self.shard_size)

    def reset_if_stale(self) -> None:
        """One process, before any writes: a manifest of another key or layout is removed (its shards get rewritten
        one by one, as their records no longer match), so no reader can take the old cache for this run's."""
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest = self.directory / MANIFEST
        if not manifest.is_file():
            return
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("key_digest") == self.key.digest and old.get("shard_size") == self.shard_size:
            return
        changed = self.key.changes_from(old.get("key", {})) or ["shard_size"]
        logger.warning("%s: built for another %s: rebuilding", self.directory, ", ".join(changed))
        manifest.unlink()

    def shard_is_done(self, shard: int, verify: str = "changed") -> bool:
        """The shard's record exists and matches this key and layout, and the file passes `shard_problem` against
        it. A file found intact by hashing after its size or mtime moved (a copy, a `touch`) gets its record's size
        and mtime updated, so the next run trusts it without hashing again."""
        record_path = self.directory / f"{shard_name(shard)}.json"
        path = self.directory / f"{shard_name(shard)}.safetensors"
        if not record_path.is_file() or not path.is_file():
            return False
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            return False
        expected = len(shard_clips(shard, self.num_clips, self.shard_size))
        if record.get("key_digest") != self.key.digest or record.get("num_clips") != expected:
            return False
        stat = file_stat(path)  # before hashing: a change while hashing shows as a changed mtime next time
        problem = shard_problem(path, stat, record, verify)
        if problem is not None:
            logger.warning("%s: %s: rebuilding it", path, problem)
            return False
        if stat != {"size": record.get("size"), "mtime_ns": record.get("mtime_ns")}:
            _write_json(record_path, {**record, **stat})
        return True

    def prepare(self, process_index: int = 0, num_processes: int = 1, verify: str = "changed") -> list[int]:
        """The shards this process must (re)write: its share (every `num_processes`-th) not already done, each
        checked by `shard_is_done` with `verify` ("changed" or "full")."""
        self.directory.mkdir(parents=True, exist_ok=True)
        mine = range(process_index, self.num_shards, num_processes)
        return [shard for shard in mine if not self.shard_is_done(shard, verify)]

    def write_shard(self, shard: int, latents: torch.Tensor, broken: dict[int, str] | None = None) -> None:
        """Stores the latents `(clips, steps, tokens, dim)` of one shard's clips, in order, atomically; `broken`
        names the clips (index in the split: video file) that could not be decoded, whose latents are zeros."""
        expected = len(shard_clips(shard, self.num_clips, self.shard_size))
        if latents.shape[0] != expected:
            raise ValueError(f"shard {shard} holds {expected} clips, got latents for {latents.shape[0]}")
        name = shard_name(shard)
        path, partial = self.directory / f"{name}.safetensors", self.directory / f".partial-{name}.safetensors"
        (self.directory / f"{name}.json").unlink(missing_ok=True)  # not done until the new record exists
        save_file(quantize(latents, self.key.precision), str(partial),
                  metadata={"key_digest": self.key.digest, "first_clip": str(shard * self.shard_size)})
        os.replace(partial, path)
        stat = file_stat(path)
        _write_json(self.directory / f"{name}.json", {
            "key_digest": self.key.digest, "num_clips": expected, "sha256": file_sha256(path),
            "latent_shape": list(latents.shape[1:]), **stat,
            **({"broken_clips": {str(index): file for index, file in sorted(broken.items())}} if broken else {}),
        })

    def finish(self) -> "LatentCache":
        """Rank 0, after every process wrote its shards: checks every record and writes the manifest last."""
        shards, latent_shape, broken = [], None, {}
        for shard in range(self.num_shards):
            record_path = self.directory / f"{shard_name(shard)}.json"
            if not record_path.is_file():
                raise LatentCacheError(f"{self.directory}: {shard_name(shard)} was not written; build again")
            record = json.loads(record_path.read_text())
            if record.get("key_digest") != self.key.digest:
                raise LatentCacheError(f"{record_path}: written for another key; build again")
            latent_shape = latent_shape or record["latent_shape"]
            broken.update(record.get("broken_clips", {}))
            shards.append({"file": f"{shard_name(shard)}.safetensors", "num_clips": record["num_clips"],
                           "sha256": record["sha256"], "size": record.get("size"),
                           "mtime_ns": record.get("mtime_ns")})
        manifest = {
            "format": CACHE_FORMAT, "key": self.key.to_dict(), "key_digest": self.key.digest,
            "num_clips": self.num_clips, "shard_size": self.shard_size, "latent_shape": latent_shape,
            "bytes_per_clip": bytes_per_clip(tuple(latent_shape), self.key.precision) if latent_shape else 0,
            "shards": shards, **({"broken_clips": broken} if broken else {}),
        }
        _write_json(self.directory / MANIFEST, manifest)
        return LatentCache(self.directory, self.key)


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------
class LatentCache:
    """A finished cache directory, read memory-mapped one clip at a time; safe to pickle into DataLoader workers
    (each process opens its own shard handles)."""

    def __init__(self, directory, key: LatentCacheKey | None = None):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise LatentCacheError(f"{self.directory}: no {MANIFEST}: the cache was never finished")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except ValueError as error:
            raise LatentCacheError(f"{manifest_path}: unreadable ({error})") from error
        if self.manifest.get("format") != CACHE_FORMAT:
            raise LatentCacheError(f"{manifest_path}: format {self.manifest.get('format')}, expected {CACHE_FORMAT}")
        if key is not None and self.manifest.get("key_digest") != key.digest:
            changed = ", ".join(key.changes_from(self.manifest.get("key", {})))
            raise LatentCacheError(f"{self.directory}: built for another {changed}")
        self.shard_size = self.manifest["shard_size"]
        self.latent_shape = tuple(self.manifest["latent_shape"] or ())  # () for an empty split
        # clips that could not be decoded when the cache was built (index: video file); their latents are zeros
        self.broken_clips = {int(index): file for index, file in self.manifest.get("broken_clips", {}).items()}
        self._handles: dict = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.manifest["num_clips"]

    def check_shards(self, verify: str = "changed") -> None:
        """Checks every shard against its manifest entry as a build does (`shard_problem`), for a reader that did not
        build the cache; raises `LatentCacheError` naming the first shard that is missing or does not match. Writes
        nothing: a shard found intact after its mtime moved is hashed again on every read until a build records it."""
        for shard in self.manifest["shards"]:
            path = self.directory / shard["file"]
            if not path.is_file():
                raise LatentCacheError(f"{path}: missing")
            problem = shard_problem(path, file_stat(path), shard, verify)
            if problem is not None:
                raise LatentCacheError(f"{path}: {problem}")

    @property
    def bytes_per_clip(self) -> int:
        return self.manifest["bytes_per_clip"]

    def _shard(self, shard: int):
        if self._pid != os.getpid():  # inherited through fork: open our own
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            path = self.directory / self.manifest["shards"][shard]["file"]
            self._handles[shard] = safe_open(str(path), framework="pt")
        return self._handles[shard]

    def __getitem__(self, index: int) -> torch.Tensor:
        """Latents `(steps, tokens, dim)` of clip `index`, float32."""
        if not 0 <= index < len(self):
            raise IndexError(f"clip {index} is outside the cache's {len(self)} clips")
        shard, offset = divmod(index, self.shard_size)
        handle = self._shard(shard)
        stored = {name: handle.get_slice(name)[offset] for name in handle.keys()}
        return dequantize(stored)

    def __getstate__(self):
        return {**self.__dict__, "_handles": {}}


class LatentClips(Dataset):
    """Rows of a `load_surgvu` split with their cached latents instead of their frames: `latents` `(S, N, D)`,
    `actions`, the per-step labels (SurgVU's `tasks` and `tools`, or MM-OR's `phase`, `next_action`,
    `seconds_to_next_action` and `breach`) and `sample_id`, as the clip transforms give them apart from the pixels.
    A clip the cache recorded as undecodable is a `BrokenClip`, as `SurgVUClips` gives it (batch with
    `collate_clips`)."""

    LABEL_COLUMNS = {"tasks": torch.int64, "tools": torch.float32,  # SurgVU
                     "phase": torch.int64, "next_action": torch.int64, "seconds_to_next_action": torch.float32,
                     "breach": torch.int64}  # MM-OR

    def __init__(self, split, cache: LatentCache):
        if len(split) != len(cache):
            raise LatentCacheError(f"{cache.directory}: {len(cache)} clips cached, the split has {len(split)}")
        built_for = cache.manifest.get("key", {}).get("dataset_fingerprint")
        if built_for != split._fingerprint:  # as many clips, other ones (another clip layout of the same videos)
            raise LatentCacheError(f"{cache.directory}: cached for other clips (dataset fingerprint {built_for}, the "
                                   f"split's is {split._fingerprint})")
        self.split = split
        self.cache = cache
        self.label_columns = [name for name in self.LABEL_COLUMNS if name in split.column_names]

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict | BrokenClip:
        if index in self.cache.broken_clips:
            return BrokenClip(self.cache.broken_clips[index], "could not be decoded when the latent cache was built",
                              index)
        row = self.split[index]
        return {
            "latents": self.cache[index],
            "actions": torch.as_tensor(row["actions"], dtype=torch.float32),
            **{name: torch.as_tensor(row[name], dtype=self.LABEL_COLUMNS[name]) for name in self.label_columns},
            "sample_id": torch.tensor(index),
        }


# --------------------------------------------------------------------------------------------------------------------
# A run's cache: whether it applies, its key, its place, building it
# --------------------------------------------------------------------------------------------------------------------
def latent_cache_off_reason(*, no_cache: bool, encoder_frozen: bool, transform) -> str | None:
    """Why the latent cache cannot serve a run, or None when it can: `no_cache` asked for none, a trained encoder's
    latents change at every step, a random transform's pixels change between epochs."""
    if no_cache:
        return "--no_cache"
    if not encoder_frozen:
        return "the encoder trains, so its latents change at every step"
    if not transform.deterministic:
        return "the clip transform is random, so a clip's pixels change between epochs"
    return None


def latent_cache_key(model, split, transform, *, fps: float, frames_per_clip: int, precision: str,
                     autocast: str, encoder_hash: str | None = None) -> LatentCacheKey:
    """The key a latent cache of `split` is valid for: `model`'s encoder weights and latent options, the transform's
    preprocessing, the data's `fps` and `frames_per_clip`, the split's fingerprint, the storage `precision`, and
    `autocast`, the run's mixed precision ("no", "bf16", ...), which changes what the encoder outputs.

    `encoder_hash`, when given, is `module_fingerprint(model.encoder)` computed once for the keys of several splits,
    as `latent_cache_keys` does (hashing reads every weight: about 4 GB for ViT-g)."""
    config = model.config
    return LatentCacheKey(
        encoder_hash=encoder_hash or module_fingerprint(model.encoder),
        preprocessing={"crop_size": transform.crop_size, "image_mean": list(transform.image_mean),
                       "image_std": list(transform.image_std), "fps": fps,
                       "frames_per_clip": frames_per_clip, "frames_per_step": config.frames_per_step,
                       "normalize_latents": config.normalize_latents, "autocast": str(autocast)},
        dataset_fingerprint=split._fingerprint,
        precision=precision,
    )


def latent_cache_keys(model, splits: dict, transform, *, fps: float, frames_per_clip: int, precision: str,
                      autocast: str) -> dict[str, LatentCacheKey]:
    """`latent_cache_key` of each split of `splits` (name: split), the encoder's weights hashed once for all of them."""
    encoder_hash = module_fingerprint(model.encoder)
    return {name: latent_cache_key(model, split, transform, fps=fps, frames_per_clip=frames_per_clip,
                                   precision=precision, autocast=autocast, encoder_hash=encoder_hash)
            for name, split in splits.items()}


def latent_cache_root(cache_dir, output_dir) -> Path:
    """Where a run's caches live, one folder per split (see `latent_cache_dir`): `cache_dir` when given, else
    `output_dir/latent_cache`."""
    return Path(cache_dir) if cache_dir else Path(output_dir) / "latent_cache"


def latent_cache_dir(cache_root, split_name: str, dataset_fingerprint: str) -> Path:
    """The folder of one split's cache: `cache_root/<split>/<dataset fingerprint>`, one per clip layout of the split,
    so that a training run on overlapping clips (`--clip_stride`) and the probes and evaluation on the builder's
    clips keep each its own cache under one `--cache_dir` instead of rebuilding each other's. A cache written
    straight into `cache_root/<split>` (the layout before) is used where it is when it holds these clips."""
    flat = Path(cache_root) / split_name
    try:
        if json.loads((flat / MANIFEST).read_text())["key"]["dataset_fingerprint"] == dataset_fingerprint:
            return flat
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return flat / dataset_fingerprint


def latent_cache_dirs(accelerator, cache_root, keys: dict[str, LatentCacheKey]) -> dict[str, Path]:
    """`latent_cache_dir` of each split (name: its cache key), chosen by every process before any of them builds:
    rank 0's build of an older cache in `<split>/` removes its manifest, and a process that looked after that would
    pick the other folder."""
    directories = {name: latent_cache_dir(cache_root, name, key.dataset_fingerprint) for name, key in keys.items()}
    accelerator.wait_for_everyone()
    return directories


@torch.no_grad()
def build_latent_cache(accelerator, model, split, transform, directory, key: LatentCacheKey, *, shard_size: int,
                       batch_size: int, num_workers: int, verify: str = "changed") -> LatentCache:
    """Encodes the clips of `split` once into `directory`, or reuses and verifies what is there; call it on every
    process of `accelerator` (an `accelerate.Accelerator`).

    Every process encodes its share of the shards; rank 0 writes the manifest last. Shards already done (record
    present, file intact as `verify` checks it: see `shard_problem`) are kept: a killed build resumes, and a
    corrupted shard is rewritten. A clip whose video cannot be decoded is stored as zeros and recorded as broken in
    its shard's record and the manifest, each file named once in a warning; its shard counts as done, so later builds
    and epochs do not try it again.
    """
    directory = Path(directory)
    builder = LatentCacheBuilder(directory, key, len(split), shard_size)
    if accelerator.is_main_process:
        builder.reset_if_stale()
    accelerator.wait_for_everyone()
    pending = builder.prepare(accelerator.process_index, accelerator.num_processes, verify)
    if pending:
        logger.info("latent cache %s: encoding %d of %d shards on process %d", directory, len(pending),
                    builder.num_shards, accelerator.process_index)
        indices = [index for shard in pending for index in shard_clips(shard, len(split), shard_size)]
        loader = DataLoader(Subset(SurgVUClips(split, transform), indices), batch_size=batch_size,
                            num_workers=num_workers, collate_fn=collate_clips)
        model.to(accelerator.device).eval()
        encoded, broken, files, written, position = {}, {}, BrokenFiles(logger.warning), 0, 0
        for batch in loader:
            expected, position = indices[position:position + batch_size], position + batch_size
            decoded = batch["sample_id"].tolist() if "sample_id" in batch else []
            if decoded:
                with accelerator.autocast():
                    latents = model.encode(batch["pixel_values_videos"].to(accelerator.device)).float().cpu()
                encoded.update(zip(decoded, latents))
            lost = [index for index in expected if index not in decoded]  # in the order collate_clips lists them
            files.add(batch.get("broken_clips", []))
            broken.update((index, file) for index, (file, _) in zip(lost, batch.get("broken_clips", [])))
            while pending and all(index in encoded or index in broken
                                  for index in shard_clips(pending[0], len(split), shard_size)):
                shard = pending.pop(0)
                clips = shard_clips(shard, len(split), shard_size)
                shape = next((clip.shape for clip in encoded.values()), None)
                if shape is None:  # nothing decoded yet: the latents' shape from an all-zero clip
                    frames = len(split[clips[0]]["frame_indices"])
                    zeros = torch.zeros(1, frames, 3, transform.crop_size, transform.crop_size)
                    shape = model.encode(zeros.to(accelerator.device)).shape[1:]
                builder.write_shard(shard, torch.stack([encoded.pop(index) if index in encoded
                                                        else torch.zeros(shape) for index in clips]),
                                    {index: broken[index] for index in clips if index in broken})
                written += 1
                if written % 10 == 0 or not pending:
                    logger.info("latent cache: %d shard(s) written by process %d", written,
                                accelerator.process_index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        builder.finish()
    accelerator.wait_for_everyone()
    return LatentCache(directory, key)


def cached_clip_datasets(accelerator, model, dataset, transform, cache_root, *, fps: float, frames_per_clip: int,
                         precision: str, shard_size: int, batch_size: int, num_workers: int,
                         verify: str = "changed") -> dict[str, LatentClips]:
    """The `LatentClips` of every split of `dataset`, each from its cache in `latent_cache_dir(cache_root, split,
    ...)` (built or verified here with `model`'s frozen encoder); the caller has checked `latent_cache_off_reason`."""
    keys = latent_cache_keys(model, dataset, transform, fps=fps, frames_per_clip=frames_per_clip, precision=precision,
                             autocast=accelerator.mixed_precision)
    directories = latent_cache_dirs(accelerator, cache_root, keys)
    clips = {}
    for name, split in dataset.items():
        cache = build_latent_cache(accelerator, model, split, transform, directories[name], keys[name],
                                   shard_size=shard_size, batch_size=batch_size, num_workers=num_workers,
                                   verify=verify)
        clips[name] = LatentClips(split, cache)
        if accelerator.is_main_process and cache.broken_clips:
            files = ", ".join(sorted(set(cache.broken_clips.values())))
            logger.warning("latent cache %s: %d clip(s) recorded as undecodable when it was built are skipped (%s)",
                           cache.directory, len(cache.broken_clips), files)
    if accelerator.is_main_process and "train" in clips:
        logger.info("latent cache: %s (%s, %.2f MiB per clip): the encoder and the video decoder are not run again "
                    "while training", cache_root, precision, clips["train"].cache.bytes_per_clip / 2**20)
    return clips
