"""The MM-OR builder on a synthetic sample in the real MM-OR layout (JPEG frames, timestamp lists, label files)."""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.io import decode_jpeg, read_file

from dataset_mmor import (
    NEXT_ACTIONS,
    ROBOT_PHASES,
    SPLIT_TO_TAKES,
    MMORClips,
    MMORClipTransform,
    MMORDataError,
    get_mmor_action_spec,
    get_mmor_build_info,
    load_mmor,
)
from dataset_mmor.synthetic import make_synthetic_mmor
from dataset_surgvu.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ClipTransform, vjepa2_preprocess


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmor_sample")
    return root, make_synthetic_mmor(root, seed=0)


@pytest.fixture(scope="module")
def dataset(sample, tmp_path_factory):
    root, _ = sample
    return load_mmor(root, cache_dir=tmp_path_factory.mktemp("mmor_cache"))


def _rows(dataset):
    return [(split, row) for split, rows in dataset.items() for row in rows]


def _copy(root: Path, target: Path) -> Path:
    """The sample with its JPEGs as symlinks (JSON files are real copies, free to edit)."""
    for path in root.rglob("*"):
        destination = target / path.relative_to(root)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        elif path.suffix == ".jpg":
            os.symlink(path, destination)
        else:
            shutil.copy(path, destination)
    return target


def _load_one(root, tmp_path, split="test", **options):
    return load_mmor(root, splits=(split,), cache_dir=tmp_path / "cache", **options)


def test_official_splits_with_short_takes_apart(sample, dataset, tmp_path):
    root, manifest = sample
    assert list(dataset) == ["train", "validation", "test"]
    info = get_mmor_build_info(dataset)
    for split in ("train", "validation", "test"):
        expected = [take for take, entry in manifest["takes"].items() if entry["split"] == split]
        assert info["splits"][split] == expected
        assert set(expected) <= set(SPLIT_TO_TAKES[split])
        assert {row["take"] for row in dataset[split]} == set(expected)
    assert "013_PKA" not in [take for takes in info["splits"].values() for take in takes]
    assert "013_PKA" not in {row["take"] for _, row in _rows(dataset)}
    assert not set(SPLIT_TO_TAKES["short"]) & {t for s in ("train", "validation", "test") for t in SPLIT_TO_TAKES[s]}
    short = _load_one(root, tmp_path, split="short")
    assert {row["take"] for row in short["short"]} == {"013_PKA"}
    # non-overlapping clips of 8 consecutive timepoints, all of each take
    for take, entry in manifest["takes"].items():
        starts = sorted(row["timepoints"][0] for _, row in _rows(dataset) if row["take"] == take)
        if entry["split"] != "short":
            assert starts == list(range(0, entry["timepoints"] - 7, 8)), take
    for _, row in _rows(dataset):
        assert row["timepoints"] == list(range(row["timepoints"][0], row["timepoints"][0] + 8))


def test_timepoints_map_to_frames_through_the_timestamp_lists(sample, dataset, tmp_path):
    root, manifest = sample
    assert not (root / "001_PKA" / "timestamp_to_pcd_and_frames_list_001_PKA.json").exists()  # fallback name only
    assert (root / "012_PKA" / "timestamp_to_pcd_and_frames_list_012_2_PKA.json").exists()  # shared folder
    seen = set()
    for _, row in _rows(dataset):
        entry = manifest["takes"][row["take"]]
        assert row["folder"] == entry["folder"]
        folder = (root / entry["folder"] / "colorimage").resolve()
        expected = [str(folder / f"camera01_colorimage-{entry['azure_frames'][t]}.jpg") for t in row["timepoints"]]
        assert row["frame_paths"] == expected
        assert all(Path(path).is_file() for path in row["frame_paths"])
        seen.add(row["take"])
    assert {"001_PKA", "012_1_PKA", "012_2_PKA"} <= seen
    assert manifest["takes"]["012_1_PKA"]["folder"] == manifest["takes"]["012_2_PKA"]["folder"] == "012_PKA"
    # frame numbers are not timepoint numbers, and the camera groups number their frames differently
    first = manifest["takes"]["001_PKA"]
    assert first["azure_frames"][0] != "000000" and first["azure_frames"] != first["simstation_frames"]
    simstation = _load_one(root, tmp_path, split="train", camera="simstation:2")["train"]
    for row in simstation:
        entry = manifest["takes"][row["take"]]
        assert [Path(p).name for p in row["frame_paths"]] == [
            f"camera02_{entry['simstation_frames'][t]}.jpg" for t in row["timepoints"]
        ]
        assert Path(row["frame_paths"][0]).parent.name == "simstation"


def test_labels_agree_with_the_manifest(sample, dataset):
    _, manifest = sample
    breaches = nulls = 0
    for _, row in _rows(dataset):
        entry = manifest["takes"][row["take"]]
        at = row["timepoints"]
        assert row["breach"] == [entry["breach"][t] for t in at]
        assert [json.loads(x) for x in row["breach_triplets"]] == [entry["breach_triplets"][t] for t in at]
        assert row["phase"] == [entry["phase"][t] for t in at]
        assert row["next_action"] == [entry["next_action"][t] for t in at]
        for t, seconds in zip(at, row["seconds_to_next_action"]):
            expected = entry["seconds_to_next_action"][t]
            assert math.isnan(seconds) if expected is None else seconds == pytest.approx(expected), (row["take"], t)
        breaches += sum(row["breach"])
        nulls += row["next_action"].count(-1)
    assert breaches > 0 and nulls > 0
    triplet = next(json.loads(x) for _, row in _rows(dataset) for x in row["breach_triplets"] if x != "[]")[0]
    assert len(triplet) == 3 and triplet[2] == "touching"
    assert set(row["phase"][0] for row in dataset["test"]) == {len(ROBOT_PHASES) - 1}  # 004_PKA: robot prepared
    rate = np.mean([b for entry in manifest["takes"].values() for b in entry["breach"]])
    assert 0.02 < rate < 0.08


def test_phase_names_are_normalised_like_the_public_evaluation(sample):
    root, manifest = sample
    texts = json.loads((root / "take_timestamp_to_robot_phase" / "001_PKA.json").read_text())
    assert any(text != text.lower().strip() for text in texts.values())  # the noise the reader must undo


def test_actions_are_one_hot_phase_and_next_action(dataset):
    spec = get_mmor_action_spec(dataset)
    assert len(spec) == 21 and spec[0] == "phase/turn on" and spec[9] == "next_action/bring in"
    assert spec[-1] == "next_action/none"
    nulls = 0
    for _, row in _rows(dataset):
        actions = np.asarray(row["actions"])
        assert actions.shape == (8, 21)
        for step in range(8):
            phase, action = row["phase"][step], row["next_action"][step]
            assert actions[step, :9].sum() == (phase >= 0) and (phase < 0 or actions[step, phase] == 1)
            if action < 0:
                assert not actions[step, 9:].any()
                nulls += 1
            else:
                assert actions[step, 9:].sum() == 1 and actions[step, 9 + action] == 1
    assert nulls > 0
    assert len(NEXT_ACTIONS) == 12 and len(ROBOT_PHASES) == 9


def test_preprocessing_equals_surgvu_and_frames_follow_the_labels(dataset):
    surgvu = ClipTransform(crop_size=32, backend="pyav")
    transform = MMORClipTransform(crop_size=32)
    assert (transform.image_mean, transform.image_std) == (surgvu.image_mean, surgvu.image_std)
    assert (transform.image_mean, transform.image_std) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    row = next(row for row in dataset["train"] if 1 in row["breach"])
    inputs = transform(row)
    frames = torch.stack([decode_jpeg(read_file(path)) for path in row["frame_paths"]])  # (T, 3, H, W)
    expected = vjepa2_preprocess(frames, 32, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    torch.testing.assert_close(inputs["pixel_values_videos"], expected, rtol=0, atol=0)
    assert inputs["pixel_values_videos"].shape == (8, 3, 32, 32)
    # the breach is drawn: a magenta hand inside the green instrument table, only at breach timepoints
    height, width = frames.shape[-2:]
    centre = frames[:, :, int(0.7 * height), int(0.25 * width)].int()  # (T, 3)
    magenta = (centre[:, 0] > 200) & (centre[:, 1] < 80) & (centre[:, 2] > 150)
    assert magenta.tolist() == [bool(b) for b in row["breach"]]
    torch.testing.assert_close(inputs["actions"], torch.tensor(row["actions"]))
    assert inputs["breach"].tolist() == row["breach"] and inputs["phase"].tolist() == row["phase"]


def test_dataloader_with_two_workers(dataset):
    clips = MMORClips(dataset["train"], MMORClipTransform(crop_size=32))
    loader = DataLoader(clips, batch_size=4, num_workers=2)
    ids = []
    for batch in loader:
        assert batch["pixel_values_videos"].shape[1:] == (8, 3, 32, 32)
        assert batch["actions"].shape[1:] == (8, 21)
        assert torch.isfinite(batch["pixel_values_videos"]).all()
        ids += batch["sample_id"].tolist()
    assert sorted(ids) == list(range(len(clips)))


def test_synthetic_sample_is_deterministic(tmp_path):
    again = make_synthetic_mmor(tmp_path / "again", seed=0, takes={"004_PKA": ("test", 88)})
    twice = make_synthetic_mmor(tmp_path / "twice", seed=0, takes={"004_PKA": ("test", 88)})
    assert twice["takes"] == again["takes"]
    first = (tmp_path / "again" / "004_PKA" / "colorimage").iterdir().__next__().name
    assert (tmp_path / "again/004_PKA/colorimage" / first).read_bytes() == (
        tmp_path / "twice/004_PKA/colorimage" / first).read_bytes()


# -- bad input: a clear error that names the file --------------------------------------------------------------------
def test_missing_label_file(sample, tmp_path):
    root = _copy(sample[0], tmp_path / "data")
    path = root / "take_timestamp_to_next_action" / "004_PKA.json"
    path.unlink()
    with pytest.raises(MMORDataError, match=str(path)):
        _load_one(root, tmp_path)


def test_label_keys_that_are_not_frame_ids(sample, tmp_path):
    root = _copy(sample[0], tmp_path / "data")
    path = root / "take_timestamp_to_robot_phase" / "004_PKA.json"
    labels = json.loads(path.read_text())
    path.write_text(json.dumps({str(int(key)): value for key, value in labels.items()}))  # "0", "1", ...
    with pytest.raises(MMORDataError, match=f"{path}.*6-digit frame ids"):
        _load_one(root, tmp_path)


def test_take_without_the_camera(sample, tmp_path):
    root, manifest = sample
    assert manifest["takes"]["002_PKA"]["missing_cameras"] == ["simstation:3"]
    with pytest.raises(MMORDataError, match=r"002_PKA/simstation.*camera simstation:3"):
        _load_one(root, tmp_path, split="validation", camera="simstation:3")


def test_missing_timestamp_list(sample, tmp_path):
    root = _copy(sample[0], tmp_path / "data")
    (root / "001_PKA" / "timestamp_to_pcd_and_frames_list.json").unlink()
    with pytest.raises(MMORDataError, match="timestamp_to_pcd_and_frames_list_001_PKA.json"):
        _load_one(root, tmp_path, split="train")


def test_missing_frame_file(sample, tmp_path):
    root, manifest = sample
    root = _copy(root, tmp_path / "data")
    frame = manifest["takes"]["004_PKA"]["azure_frames"][10]
    path = root / "004_PKA" / "colorimage" / f"camera01_colorimage-{frame}.jpg"
    path.unlink()
    with pytest.raises(MMORDataError, match=f"{path}: frame file missing"):
        _load_one(root, tmp_path)
    kept = _load_one(root, tmp_path, skip_missing_frames=True)["test"]
    assert len(kept) == 88 // 8 - 1 and all(10 not in row["timepoints"] for row in kept)
    assert get_mmor_build_info(kept)["clips_with_missing_frames"] == 1


def test_unreadable_frame_at_decode_time(sample, tmp_path):
    root = _copy(sample[0], tmp_path / "data")
    row = _load_one(root, tmp_path)["test"][0]
    path = Path(row["frame_paths"][3])
    path.unlink()  # a symlink: replace it, do not write through it
    path.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(MMORDataError, match=str(path)):
        MMORClipTransform(crop_size=32)(row)


def test_empty_test_split(sample, tmp_path):
    root, _ = sample
    with pytest.raises(MMORDataError, match=r"split 'test' has no clip.*timestamp_to_pcd_and_frames_list_004_PKA"):
        _load_one(root, tmp_path, frames_per_clip=90)  # 004_PKA has 88 timepoints
    with pytest.raises(MMORDataError, match=r"split 'test' has no clip.*036_PKA"):
        _load_one(root, tmp_path, split_to_takes={"test": ["036_PKA"]})  # not downloaded


def test_bad_options():
    with pytest.raises(ValueError, match="camera"):
        load_mmor(".", camera="azure:6")


def test_skip_missing_frames_on_the_command_line(sample, tmp_path, caplog):
    from training_surgical_wm.arguments import parse_training_arguments
    from training_surgical_wm.data import load_dataset_splits

    root, manifest = sample
    root = _copy(root, tmp_path / "data")
    frame = manifest["takes"]["004_PKA"]["azure_frames"][10]
    path = root / "004_PKA" / "colorimage" / f"camera01_colorimage-{frame}.jpg"
    path.unlink()
    options = ["--dataset", "mmor", "--data_root", str(root), "--dataset_cache_dir", str(tmp_path / "cache")]
    _, data_args, _ = parse_training_arguments(options)
    with pytest.raises(MMORDataError, match=f"{path}: frame file missing.*--skip_missing_frames"):
        load_dataset_splits(data_args)
    _, data_args, _ = parse_training_arguments([*options, "--skip_missing_frames"])
    with caplog.at_level("WARNING", logger="dataset_mmor.builder"):
        dataset = load_dataset_splits(data_args)
    assert len(dataset["test"]) == 88 // 8 - 1 and all(10 not in row["timepoints"] for row in dataset["test"])
    info = get_mmor_build_info(dataset)
    assert info["missing_frames"] == 1 and info["clips_with_missing_frames"] == 1
    assert f"{path}: frame file missing (1 of 88 frames of take 004_PKA, camera azure:1): 1 of 11 clips left out" \
        in caplog.text


def test_changed_or_added_images_of_the_camera_rebuild_the_split(sample, tmp_path):
    root, manifest = sample
    root = _copy(root, tmp_path / "data")
    frame = manifest["takes"]["004_PKA"]["azure_frames"][10]
    path = root / "004_PKA" / "colorimage" / f"camera01_colorimage-{frame}.jpg"
    original = path.resolve()
    path.unlink()

    def build_folder(split):
        return Path(split.cache_files[0]["filename"]).parent

    first = _load_one(root, tmp_path, skip_missing_frames=True)["test"]
    assert len(first) == 88 // 8 - 1
    os.symlink(original, path)  # the frame appears: its clip comes back
    added = _load_one(root, tmp_path, skip_missing_frames=True)["test"]
    assert len(added) == 88 // 8 and build_folder(added) != build_folder(first)
    assert build_folder(_load_one(root, tmp_path, skip_missing_frames=True)["test"]) == build_folder(added)
    path.unlink()
    path.write_bytes(original.read_bytes())  # the same name, a new file
    changed = _load_one(root, tmp_path, skip_missing_frames=True)["test"]
    assert build_folder(changed) != build_folder(added)
    other = root / "004_PKA" / "simstation" / f"camera00_{manifest['takes']['004_PKA']['simstation_frames'][0]}.jpg"
    other.unlink()
    other.write_bytes(original.read_bytes())  # another camera's image: not this split's
    assert build_folder(_load_one(root, tmp_path, skip_missing_frames=True)["test"]) == build_folder(changed)
