"""The dataset table (dataset_surgvu.catalog): each entry loads, transforms, names actions and picks labelled clips as
the loaders and the probe script do, and an unknown name is refused with the known ones."""

import pytest
import torch

from dataset_mmor import NEXT_ACTIONS, ROBOT_PHASES, MMORClipTransform, get_mmor_action_spec, load_mmor
from dataset_mmor.synthetic import make_synthetic_mmor
from dataset_surgvu import TASK_CLASSES, TOOL_CLASSES, ClipTransform, get_action_spec, get_build_metadata, load_surgvu
from dataset_surgvu.catalog import DATASETS, PROBE_TARGETS, get_dataset, get_probe_target


@pytest.fixture(scope="module")
def mmor_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmor_sample")
    make_synthetic_mmor(root, seed=0)
    return root


@pytest.fixture(scope="module")
def surgvu_splits(surgvu_sample, tmp_path_factory):
    root, _ = surgvu_sample
    cache = tmp_path_factory.mktemp("catalog_surgvu_cache")
    # require_labels=False is not a data option: the default keeps only labelled cases, as training does.
    return get_dataset("surgvu").load_splits(root, fps=4.0, frames_per_clip=8, cache_dir=str(cache)), root, cache


@pytest.fixture(scope="module")
def mmor_splits(mmor_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("catalog_mmor_cache")
    return get_dataset("mmor").load_splits(mmor_root, camera="azure:1", frames_per_clip=4, clip_stride=1,
                                           cache_dir=str(cache)), cache


def test_the_table_names_surgvu_and_mmor():
    assert list(DATASETS) == ["surgvu", "mmor"]
    assert [entry.name for entry in DATASETS.values()] == ["surgvu", "mmor"]
    assert get_dataset("surgvu").display_name == "SurgVU" and get_dataset("mmor").display_name == "MM-OR"
    assert list(PROBE_TARGETS) == ["task", "tools", "phase", "next_action", "breach"]
    for entry in DATASETS.values():
        for name, target in entry.targets.items():
            assert target.name == name and target.dataset == entry.name and get_probe_target(name) is target
    assert get_dataset("surgvu").evaluation_splits == ("train", "validation", "test", "all")
    assert get_dataset("mmor").evaluation_splits == ("train", "validation", "test")


def test_an_unknown_name_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'lerobot': known datasets are surgvu, mmor"):
        get_dataset("lerobot")
    with pytest.raises(ValueError, match=r"unknown probe target 'tool'.*task, tools, phase, next_action, breach"):
        get_probe_target("tool")


def test_entries_are_frozen():
    with pytest.raises(AttributeError):
        get_dataset("surgvu").name = "other"
    with pytest.raises(AttributeError):
        get_probe_target("task").label_column = "tools"


def test_transforms_are_the_datasets_own():
    surgvu, mmor = get_dataset("surgvu").transform(64), get_dataset("mmor").transform(crop_size=32)
    assert type(surgvu) is ClipTransform and vars(surgvu) == vars(ClipTransform(crop_size=64))
    assert type(mmor) is MMORClipTransform and vars(mmor) == vars(MMORClipTransform(crop_size=32))


def test_surgvu_entry_loads_as_load_surgvu(surgvu_splits):
    dataset, root, cache = surgvu_splits
    expected = load_surgvu(root, None, fps=4.0, frames_per_clip=8, clip_stride=None, validation_fraction=0.2,
                           split_seed=0, cache_dir=str(cache))
    assert list(dataset) == ["train", "validation", "test"]
    for name in expected:
        assert dataset[name]._fingerprint == expected[name]._fingerprint
        assert dataset[name].to_dict() == expected[name].to_dict()
    entry = get_dataset("surgvu")
    assert entry.action_spec(dataset) == get_action_spec(dataset)
    assert entry.build_metadata(dataset) == get_build_metadata(dataset)


def test_mmor_entry_loads_as_load_mmor(mmor_root, mmor_splits):
    dataset, cache = mmor_splits
    expected = load_mmor(mmor_root, "azure:1", frames_per_clip=4, clip_stride=1, cache_dir=str(cache))
    assert list(dataset) == ["train", "validation", "test"]
    for name in expected:
        assert dataset[name]._fingerprint == expected[name]._fingerprint
        assert dataset[name].cache_files == expected[name].cache_files  # the same Arrow files (NaN != NaN in rows)
    entry = get_dataset("mmor")
    assert entry.action_spec(dataset) == get_mmor_action_spec(dataset)
    assert entry.build_metadata(dataset) == {}


def test_probe_targets_classes_and_problem_types():
    expected = {
        "task": (list(TASK_CLASSES), "single_label_classification", "tasks"),
        "tools": (list(TOOL_CLASSES), "multi_label_classification", "tools"),
        "phase": (list(ROBOT_PHASES), "single_label_classification", "phase"),
        "next_action": (list(NEXT_ACTIONS), "single_label_classification", "next_action"),
        "breach": (["no breach", "breach"], "single_label_classification", "breach"),
    }
    for name, (classes, problem_type, column) in expected.items():
        target = get_probe_target(name)
        assert (list(target.class_names), target.problem_type, target.label_column) == (classes, problem_type, column)
        assert target.id2label == dict(enumerate(classes))


def test_labelled_clips_and_clip_labels(surgvu_splits, mmor_splits):
    surgvu, _, _ = surgvu_splits
    mmor, _ = mmor_splits
    for name in ("task", "tools"):
        split = surgvu["train"]
        assert get_probe_target(name).labelled_indices(split) == [
            index for index, has_labels in enumerate(split["has_labels"]) if has_labels]
    some_skipped = False
    for name in ("phase", "next_action", "breach"):
        for split in mmor.values():
            indices = get_probe_target(name).labelled_indices(split)
            assert indices == [index for index, labels in enumerate(split[name]) if labels[-1] >= 0]
            some_skipped |= len(indices) < len(split)
    assert some_skipped  # null next actions leave clips out
    batch = {"tasks": torch.tensor([[0, 3], [1, -1]]), "tools": torch.tensor([[[0, 1], [1, 0]], [[1, 1], [0, 0]]])}
    assert get_probe_target("task").clip_labels(batch).tolist() == [3, -1]
    tools = get_probe_target("tools").clip_labels(batch)
    assert tools.dtype == torch.float32 and tools.tolist() == [[1.0, 0.0], [0.0, 0.0]]
