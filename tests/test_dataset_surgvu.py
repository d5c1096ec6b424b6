"""The SurgVU builder on SurgVU-format folders with real H.264 videos and real-style noisy labels."""

import collections
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest

from dataset_surgvu import (
    ARMS,
    TASK_CLASSES,
    TOOL_CLASSES,
    SurgVULabelError,
    get_action_spec,
    get_build_metadata,
    load_surgvu,
    scan_surgvu,
)
from dataset_surgvu.builder import (
    BUILD_INFO_FILENAME,
    SurgVUBuildInfo,
    assign_cases,
    get_build_info,
    sample_frame_indices,
)
from dataset_surgvu.labels import labels_at, normalize_task_name, normalize_tool_name, part_offsets, read_case_labels
from dataset_surgvu.video import CorruptVideoError, FrameUnavailableError, decode_clip, probe_video, torchcodec_problem


def _load(root, tmp_path, **options):
    return load_surgvu(root, cache_dir=tmp_path / "cache", **options)


def _expected(case, part, frame_indices, fps):
    """Per-arm tools and tasks from the generator's clean labels, on the case timeline (parts back to back)."""
    part_start = sum(p["num_frames"] for p in case["parts"] if p["part"] < part) / fps
    times = part_start + np.asarray(frame_indices) / fps
    arm_tools = np.zeros((len(times), len(ARMS), len(TOOL_CLASSES)), dtype=np.uint8)
    for tool in case["tools"]:
        covered = (times >= tool["start"]) & (times < tool["stop"])
        arm_tools[covered, ARMS.index(tool["arm"]), TOOL_CLASSES.index(tool["tool"])] = 1
    tasks = np.full(len(times), TASK_CLASSES.index("Other"))
    for segment in case["tasks"]:
        tasks[(times >= segment["start"]) & (times < segment["stop"])] = TASK_CLASSES.index(segment["task"])
    return arm_tools, tasks, times


def _link_copy(source: Path, target: Path):
    """A copy of a SurgVU folder whose videos are symlinks (labels are real files, free to edit)."""
    for path in source.rglob("*"):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        elif path.suffix == ".mp4":
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, destination)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, destination)
    return target


@pytest.mark.parametrize("sample", ["surgvu_sample", "surgvu_sample_30fps"])
def test_labels_agree_with_the_label_files(sample, request, tmp_path):
    root, manifest = request.getfixturevalue(sample)
    fps = manifest["fps"]
    dataset = _load(root, tmp_path)
    rows = [row for split in dataset.values() for row in split]
    assert rows
    spanning_steps = 0
    for row in rows:
        case = manifest["cases"][row["case_id"]]
        assert row["video_fps"] == pytest.approx(fps)
        assert np.allclose(row["timestamps"], np.asarray(row["frame_indices"]) / fps)
        assert np.allclose(np.diff(row["timestamps"]), 0.25, atol=0.5 / fps)  # 4 frames a second
        arm_tools, tasks, times = _expected(case, row["part"], row["frame_indices"], fps)
        np.testing.assert_array_equal(np.asarray(row["arm_tools"]), arm_tools, err_msg=f"{row['case_id']} {times}")
        np.testing.assert_array_equal(np.asarray(row["tools"]), arm_tools.max(axis=1))
        np.testing.assert_array_equal(np.asarray(row["tasks"]), tasks, err_msg=f"{row['case_id']} {times}")
        actions = np.asarray(row["actions"])
        np.testing.assert_array_equal(actions[:, :48], arm_tools.reshape(len(times), -1))
        np.testing.assert_array_equal(actions[:, 48:].argmax(axis=1), tasks)
        if row["part"] == 2:  # steps of part 2 covered by an interval installed in part 1
            part2_start = case["parts"][0]["num_frames"] / fps
            for tool in case["tools"] + case["tasks"]:
                if tool["start"] < part2_start:
                    spanning_steps += int(((times >= tool["start"]) & (times < tool["stop"])).sum())
    assert spanning_steps > 0, "no step of a second part was covered by an interval starting in the first"
    tasks_seen = {task for row in rows for task in row["tasks"]}
    assert len(tasks_seen) >= 3


@pytest.mark.parametrize("sample", ["surgvu_sample", "surgvu_sample_30fps"])
def test_label_edges_on_sampled_frames(sample, request, tmp_path):
    """The generator puts some label ends exactly on sampled frames: a frame at a start belongs to the interval, a
    frame at its stop does not (at 30 fps such times are rounded to microseconds in the label files)."""
    root, manifest = request.getfixturevalue(sample)
    fps = manifest["fps"]
    dataset = _load(root, tmp_path)
    hits = collections.Counter()
    for row in (row for split in dataset.values() for row in split):
        case = manifest["cases"][row["case_id"]]
        _, _, times = _expected(case, row["part"], row["frame_indices"], fps)
        arm_tools, tasks = np.asarray(row["arm_tools"]), np.asarray(row["tasks"])
        where = f"{row['case_id']} part {row['part']} at"
        for tool in case["tools"]:
            arm, index = ARMS.index(tool["arm"]), TOOL_CLASSES.index(tool["tool"])
            for step in np.nonzero(times == tool["start"])[0]:
                assert arm_tools[step, arm, index] == 1, f"{where} {times[step]}: {tool} not installed at its start"
                hits["tool start"] += 1
            for step in np.nonzero(times == tool["stop"])[0]:
                assert arm_tools[step, arm, index] == 0, f"{where} {times[step]}: {tool} still installed at its stop"
                hits["tool stop"] += 1
        for segment in case["tasks"]:
            task = TASK_CLASSES.index(segment["task"])
            for step in np.nonzero(times == segment["start"])[0]:
                assert tasks[step] == task, f"{where} {times[step]}: {segment} does not cover its start"
                hits["task start"] += 1
            for step in np.nonzero(times == segment["stop"])[0]:
                assert tasks[step] != task, f"{where} {times[step]}: {segment} covers its stop"
                hits["task stop"] += 1
    assert all(hits[kind] >= 2 for kind in ("tool start", "tool stop", "task start", "task stop")), hits


def test_labels_at_edges_with_times_rounded_in_the_files(tmp_path):
    """Frame 8 of 30 fps is 0.2666...s, written 0.266667: exactly at a start it is in, exactly at a stop it is out,
    in the first part and in the second, which starts after part 1's 301 frames."""
    tools_csv, tasks_csv = tmp_path / "tools.csv", tmp_path / "tasks.csv"
    tools_csv.write_text(
        "index,install_case_part,install_case_time,uninstall_case_part,uninstall_case_time,arm,commercial_toolname,"
        "groundtruth_toolname\n0,1.0,00:00:00.266667,2.0,00:00:00.266667,USM2,Cadiere Forceps,cadiere forceps\n"
    )
    tasks_csv.write_text(
        "index,start_part,start_time,stop_part,stop_time,groundtruth_taskname\n"
        "0,1,0.266667,1,0.500000,Suturing\n1,2,0.266667,2,0.766667,suturing\n"
    )
    labels = read_case_labels(tools_csv, tasks_csv)
    offsets = part_offsets(labels, {1: 301 / 30, 2: 5.0})
    frames = np.array([0, 8, 15, 23, 30]) / 30  # the 4 fps grid of a 30 fps video
    suturing, other = TASK_CLASSES.index("Suturing"), TASK_CLASSES.index("Other")
    arm, cadiere = ARMS.index("USM2"), TOOL_CLASSES.index("cadiere forceps")
    arm_tools, tasks = labels_at(labels, offsets, 1, frames)
    assert tasks.tolist() == [other, suturing, other, other, other]
    assert arm_tools[:, arm, cadiere].tolist() == [0, 1, 1, 1, 1]
    arm_tools, tasks = labels_at(labels, offsets, 2, frames)
    assert tasks.tolist() == [other, suturing, suturing, other, other]
    assert arm_tools[:, arm, cadiere].tolist() == [1, 0, 0, 0, 0]
    assert arm_tools.sum() == 1


@pytest.mark.parametrize("sample", ["surgvu_sample", "surgvu_sample_30fps"])
def test_corrupt_video_is_skipped_named_and_counted(sample, request, tmp_path, caplog):
    root, manifest = request.getfixturevalue(sample)
    corrupt = [root / p["path"] for case in manifest["cases"].values() for p in case["parts"] if p["corrupt"]]
    assert len(corrupt) == 1
    with caplog.at_level(logging.WARNING, logger="dataset_surgvu"):
        dataset = _load(root, tmp_path)
    assert any(str(corrupt[0]) in record.getMessage() for record in caplog.records)
    metadata = get_build_metadata(dataset)
    assert metadata["num_corrupt_videos"] == 1
    assert list(metadata["corrupt_videos"]) == [str(corrupt[0].resolve())]
    part_of_corrupt = {(row["case_id"], row["part"]) for split in dataset.values() for row in split}
    corrupt_case = corrupt[0].parent.name
    assert (corrupt_case, 1) in part_of_corrupt and (corrupt_case, 2) not in part_of_corrupt


def test_clip_count_and_frame_indices(surgvu_sample, tmp_path):
    root, manifest = surgvu_sample
    dataset = _load(root, tmp_path, clip_stride=3)
    for split in dataset.values():
        for case_id in set(split["case_id"]):
            case = manifest["cases"][case_id]
            for part in case["parts"]:
                if part["corrupt"]:
                    continue
                steps = len(sample_frame_indices(part["num_frames"], manifest["fps"], 4.0))
                rows = split.filter(lambda row: row["case_id"] == case_id and row["part"] == part["part"])
                assert len(rows) == (steps - 8) // 3 + 1
                assert rows[0]["frame_indices"] == [15 * k for k in range(8)]
                assert rows[1]["frame_indices"][0] == 45


def test_sample_frame_indices_at_rates_that_do_not_divide():
    indices = sample_frame_indices(100, 30.0, 4.0)
    np.testing.assert_array_equal(indices[:5], [0, 8, 15, 23, 30])  # 7.5 frames apart, rounded half up
    assert indices[-1] < 100 and len(indices) == int(99 * 4 / 30) + 1
    assert len(sample_frame_indices(0, 60.0, 4.0)) == 0


def test_short_video_yields_no_clip(surgvu_sample, tmp_path):
    from dataset_surgvu.synthetic import make_synthetic_surgvu

    root, _ = surgvu_sample
    short = tmp_path / "short"
    make_synthetic_surgvu(short, seed=3, num_cases=1, seconds=1.2, corrupt_video=False, unlabeled_case=False)
    short_video = next((short / "surgvu24").rglob("*.mp4"))
    assert probe_video(short_video).num_frames < 7 * 15 + 1  # less than one 8-frame clip at 4 fps
    _link_copy(root / "surgvu24" / "case_001", short / "surgvu24" / "case_001")
    _link_copy(root / "labels" / "case_001", short / "labels" / "case_001")
    dataset = _load(short, tmp_path, validation_fraction=0.0)
    assert set(dataset["train"]["case_id"]) == {"case_001"}
    assert len(dataset["validation"]) == 0
    assert get_build_metadata(dataset["validation"])["train_cases"] == ["case_000", "case_001"]  # an empty split too


def test_case_without_labels_left_out_or_kept(surgvu_sample, tmp_path):
    root, manifest = surgvu_sample
    unlabeled = [case_id for case_id, case in manifest["cases"].items() if not case["labeled"]]
    assert len(unlabeled) == 1
    left_out = _load(root, tmp_path)
    assert unlabeled[0] not in {c for split in left_out.values() for c in split["case_id"]}
    assert get_build_metadata(left_out)["cases_without_labels"] == unlabeled
    kept = _load(root, tmp_path, require_labels=False)
    rows = [row for split in kept.values() for row in split if row["case_id"] == unlabeled[0]]
    assert rows and not any(row["has_labels"] for row in rows)
    assert all(task == -1 for row in rows for task in row["tasks"])
    assert all(not np.asarray(row["actions"]).any() for row in rows)
    assert all(row["has_labels"] for split in kept.values() for row in split if row["case_id"] != unlabeled[0])


@pytest.mark.parametrize("label_file", ["tools.csv", "tasks.csv"])
def test_label_file_with_wrong_columns_raises_naming_it(label_file, surgvu_sample, tmp_path):
    root, _ = surgvu_sample
    copy = _link_copy(root, tmp_path / "copy")
    path = copy / "labels" / "case_001" / label_file
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace("_part", "_section")  # e.g. start_section instead of start_part
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SurgVULabelError) as error:
        _load(copy, tmp_path)
    message = str(error.value)
    assert str(path) in message
    assert ("install_case_part" if label_file == "tools.csv" else "start_part") in message


def test_split_is_by_case_deterministic_and_seeded(surgvu_sample, tmp_path):
    root, _ = surgvu_sample
    first, again = _load(root, tmp_path, split_seed=5), _load(root, tmp_path / "other", split_seed=5)
    train_cases, validation_cases = set(first["train"]["case_id"]), set(first["validation"]["case_id"])
    assert train_cases and validation_cases and not train_cases & validation_cases
    assert validation_cases == set(again["validation"]["case_id"])
    assert first["train"]["frame_indices"] == again["train"]["frame_indices"]
    metadata = get_build_metadata(first)
    assert metadata["options"]["split_seed"] == 5
    assert (set(metadata["train_cases"]), set(metadata["validation_cases"])) == (train_cases, validation_cases)

    cases = [f"case_{n:03d}" for n in range(40)]
    splits = {seed: assign_cases(cases, 0.2, 0.0, seed)[0] for seed in range(4)}
    assert all(len(validation) == 8 for validation in splits.values())
    assert len({frozenset(validation) for validation in splits.values()}) > 1  # the seed matters
    assert assign_cases(list(reversed(cases)), 0.2, 0.0, 1)[0] == splits[1]  # order of discovery does not
    assert len(splits[1] ^ assign_cases(cases + ["case_099"], 0.2, 0.0, 1)[0]) <= 2  # one more case moves one

    forced = _load(root, tmp_path, validation_cases=["case_000"], train_cases=["case_001"], exclude_cases=["case_002"])
    assert "case_000" in set(forced["validation"]["case_id"])
    assert "case_001" in set(forced["train"]["case_id"])
    assert "case_002" not in set(forced["train"]["case_id"]) | set(forced["validation"]["case_id"])
    with pytest.raises(ValueError, match="both train and validation"):
        _load(root, tmp_path, validation_cases=["case_000"], train_cases=["case_000"])


def test_test_split_holds_whole_cases_seeded_and_forced(surgvu_sample, tmp_path):
    root, _ = surgvu_sample
    dataset = _load(root, tmp_path)  # the defaults: a fifth of the 3 labelled cases each for validation and test
    cases = {name: set(split["case_id"]) for name, split in dataset.items()}
    assert list(cases) == ["train", "validation", "test"] and all(len(found) == 1 for found in cases.values())
    assert len(cases["train"] | cases["validation"] | cases["test"]) == 3  # a case in one split only
    metadata = get_build_metadata(dataset)
    assert [set(metadata[f"{name}_cases"]) for name in cases] == list(cases.values())
    assert (metadata["options"]["validation_fraction"], metadata["options"]["test_fraction"]) == (0.2, 0.2)

    (forced_case,) = cases["train"]
    forced = _load(root, tmp_path, test_cases=[forced_case])
    assert set(forced["test"]["case_id"]) == {forced_case}
    assert get_build_metadata(forced)["options"]["forced_cases"]["test"] == [forced_case]
    assert len(_load(root, tmp_path, test_fraction=0.0)["test"]) == 0
    with pytest.raises(ValueError, match="both validation and test"):
        _load(root, tmp_path, validation_cases=[forced_case], test_cases=[forced_case])

    case_ids = [f"case_{n:03d}" for n in range(40)]
    for seed in range(3):
        # The rule of the builds made before the test split: the first fifth by a seeded hash of the case id.
        ranked = sorted(case_ids, key=lambda case_id: hashlib.sha256(f"{seed}/{case_id}".encode()).hexdigest())
        validation, test = assign_cases(case_ids, 0.2, 0.0, seed)
        assert (validation, test) == (set(ranked[:8]), set())  # test_fraction 0: the validation split of before
        validation, test = assign_cases(case_ids, 0.2, 0.25, seed)
        assert validation == set(ranked[:8]) and len(test) == 10 and not validation & test
        assert assign_cases(case_ids, 0.2, 0.25, seed) == (validation, test)  # deterministic
    tests = {frozenset(assign_cases(case_ids, 0.2, 0.2, seed)[1]) for seed in range(4)}
    assert len(tests) > 1  # seeded by split_seed
    validation, test = assign_cases(case_ids, 0.2, 0.2, 0, test_cases=["case_005", "case_006"])
    assert {"case_005", "case_006"} <= test and len(test) == 8 and len(validation) == 8 and not validation & test


def test_cache_is_reused_and_follows_data_and_options(surgvu_sample, tmp_path):
    root, _ = surgvu_sample
    copy = _link_copy(root, tmp_path / "copy")
    first = _load(copy, tmp_path)
    again = _load(copy, tmp_path)
    assert first["train"].cache_files == again["train"].cache_files
    other_options = _load(copy, tmp_path, frames_per_clip=4)
    assert other_options["train"].cache_files != first["train"].cache_files
    assert np.asarray(other_options["train"][0]["actions"]).shape == (4, 56)
    tasks_csv = copy / "labels" / "case_000" / "tasks.csv"
    tasks_csv.write_text(tasks_csv.read_text().replace("\n", "\n", 1))
    os.utime(tasks_csv, ns=(1, 1))
    changed = _load(copy, tmp_path)
    assert changed["train"].cache_files != first["train"].cache_files


def test_action_spec_follows_the_label_vocabulary(surgvu_sample, tmp_path):
    root, _ = surgvu_sample
    dataset = _load(root, tmp_path)
    spec = get_action_spec()
    assert spec == get_action_spec(dataset) == get_action_spec(dataset["validation"])
    assert len(spec) == np.asarray(dataset["train"][0]["actions"]).shape[-1] == 4 * 12 + 8
    assert spec[0] == "USM1/needle driver" and spec[47] == "USM4/grasping retractor" and spec[-1] == "task/Other"
    with pytest.raises(ValueError, match="not a SurgVU clip dataset"):
        get_action_spec(datasets.Dataset.from_dict({"actions": [[0.0, 1.0]]}))
    assert "CC BY-NC-SA 4.0" in dataset["train"].info.license
    assert dataset["train"].features["tasks"].feature.names == list(TASK_CLASSES)


def test_build_info_is_a_file_beside_the_arrow_files(surgvu_sample, tmp_path, caplog):
    root, manifest = surgvu_sample
    dataset = _load(root, tmp_path, split_seed=3)
    folder = Path(dataset["train"].cache_files[0]["filename"]).parent
    path = folder / BUILD_INFO_FILENAME
    assert path.is_file() and Path(dataset["validation"].cache_files[0]["filename"]).parent == folder
    assert dataset["train"].info.description.startswith("SurgVU") and "{" not in dataset["train"].info.description
    info = get_build_info(dataset)
    assert info == SurgVUBuildInfo.load(folder) and info.options["split_seed"] == 3
    metadata = get_build_metadata(dataset)
    assert set(metadata) == {
        "action_spec", "arms", "tool_classes", "task_classes", "corrupt_videos", "num_corrupt_videos",
        "cases_without_labels", "excluded_cases", "train_cases", "validation_cases", "test_cases", "label_noise",
        "options",
    }  # fmt: skip
    assert metadata["action_spec"] == get_action_spec() and metadata["num_corrupt_videos"] == 1
    assert metadata["train_cases"] == sorted(set(dataset["train"]["case_id"]))
    assert json.loads(path.read_text())["train_cases"] == metadata["train_cases"]
    assert get_build_metadata(dataset["validation"]) == metadata
    assert metadata["label_noise"]["tools/camera_in"] == sum(
        case["noise"]["tools/camera_in"] for case in manifest["cases"].values() if case["labeled"]
    )

    path.unlink()  # the Arrow files without the build info: a clear error, and load_surgvu builds again
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder))):
        get_build_metadata(dataset)
    with caplog.at_level(logging.WARNING, logger="dataset_surgvu"):
        again = _load(root, tmp_path, split_seed=3)
    assert any(str(path) in record.getMessage() and "again" in record.getMessage() for record in caplog.records)
    assert again["train"].cache_files == dataset["train"].cache_files
    assert get_build_metadata(again) == metadata

    path.write_text("{")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        get_build_metadata(again)
    with pytest.raises(ValueError, match="no Arrow cache files"):
        get_build_metadata(datasets.Dataset.from_dict({"case_id": ["case_000"]}))


def test_crop_box_removes_tool_band_and_black_margins(surgvu_sample, tmp_path):
    root, manifest = surgvu_sample
    dataset = _load(root, tmp_path)
    top, left, height, width = dataset["train"][0]["crop_box"]
    from dataset_surgvu.synthetic import MARGIN_FRACTION, TOOL_BAND_FRACTION

    band_top = manifest["height"] - int(round(manifest["height"] * TOOL_BAND_FRACTION))
    margin = int(round(manifest["width"] * MARGIN_FRACTION))
    assert top == 0 and top + height <= band_top
    assert abs(left - margin) <= 2 and abs(left + width - (manifest["width"] - margin)) <= 2
    uncropped = _load(root, tmp_path, crop_tool_band=False, crop_black_margins=False)
    assert uncropped["train"][0]["crop_box"] == [0, 0, manifest["height"], manifest["width"]]


def test_crop_box_is_the_builders_with_its_defaults(surgvu_sample, tmp_path):
    from dataset_surgvu import SurgVUConfig, crop_box

    root, _ = surgvu_sample
    row = _load(root, tmp_path)["train"][0]
    info = probe_video(row["video_path"])
    assert crop_box(info) == row["crop_box"]
    defaults = {field.name: field.default for field in SurgVUConfig.__dataclass_fields__.values()}
    assert (defaults["crop_tool_band"], defaults["tool_band_fraction"], defaults["crop_black_margins"]) == (
        True, 0.08, True)  # crop_box's own defaults
    assert crop_box(info, crop_tool_band=False, crop_black_margins=False) == [0, 0, info.height, info.width]
    band = crop_box(info, tool_band_fraction=0.25, crop_black_margins=False)
    assert band == [0, 0, int(info.height * 0.75), info.width]


def test_part_file_names():
    from dataset_surgvu import parse_part_file

    assert parse_part_file("case_005_video_part_002.mp4") == ("case_005", 2)
    assert parse_part_file("CASE_123_VIDEO_PART_010.MP4") == ("CASE_123", 10)
    for name in ("case_005_video_part_002.mp4.bak", "case_5.mp4", "._case_005_video_part_002", "notes.txt"):
        assert parse_part_file(name) is None


def test_data_dir_can_be_the_video_folder_with_labels_elsewhere(surgvu_sample, tmp_path):
    root, _ = surgvu_sample
    dataset = load_surgvu(root / "surgvu24", root / "labels", cache_dir=tmp_path / "cache")
    reference = _load(root, tmp_path / "other")
    assert sorted(dataset["train"]["case_id"]) == sorted(reference["train"]["case_id"])


def test_label_noise_is_normalised():
    assert normalize_tool_name("nan(camera in)")[0] is None
    assert normalize_tool_name("")[0] is None
    assert normalize_tool_name('Single Site"')[0] is None
    assert normalize_tool_name("clip applier ")[0] == TOOL_CLASSES.index("clip applier")
    assert normalize_tool_name("Needle Driver")[0] == TOOL_CLASSES.index("needle driver")
    for tool in ("suction irrigator", "synchroseal", "tenaculum forceps", "potts scissors", "bipolar dissector"):
        index, noise = normalize_tool_name(tool)
        assert index is None and noise == ["out_of_class"]
    assert normalize_task_name("suturing")[0] == normalize_task_name("Suturing")[0] == TASK_CLASSES.index("Suturing")
    assert normalize_task_name(" Rectal artery/vein")[0] == TASK_CLASSES.index("Rectal artery/vein")
    other = TASK_CLASSES.index("Other")
    for name in ('retraction arm positioning"', " camera adjustments", "dissection", "other", ""):
        assert normalize_task_name(name)[0] == other


def test_scan_reports_cases_labels_noise_and_corrupt_videos(surgvu_sample):
    root, manifest = surgvu_sample
    report = scan_surgvu(root)
    assert report["num_cases"] == len(manifest["cases"])  # __MACOSX and .DS_Store ignored
    assert report["num_videos"] == sum(len(case["parts"]) for case in manifest["cases"].values())
    assert report["cases_without_labels"] == [c for c, case in manifest["cases"].items() if not case["labeled"]]
    assert len(report["corrupt_videos"]) == 1
    noise = report["label_noise"]
    written = manifest["noise"]
    assert noise["tools/camera_in"] == written["tools/camera_in"]
    assert noise["tools/empty_name"] == written["tools/empty_name"]
    assert noise["tools/stray_whitespace"] == written["tools/trailing_space"]
    assert noise["tools/out_of_class"] == written["tools/out_of_class"] + written["tools/malformed"]
    assert noise["tasks/stray_quote"] >= 1 and noise["tasks/out_of_class"] >= 1
    assert report["total_hours"] > 0


def test_truncated_file_with_intact_header_is_detected(tmp_path):
    import av

    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:  # index before the data
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for number in range(90):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), number * 2, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert probe_video(path).num_frames == 90
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    assert probe_video(path, check_end=False).num_frames == 90  # the header still announces every frame
    with pytest.raises(CorruptVideoError, match="truncated"):
        probe_video(path)
    backends = ["pyav"] + (["torchcodec"] if torchcodec_problem() is None else [])
    for backend in backends:  # frames past the cut: a named error, not garbage
        with pytest.raises(FrameUnavailableError, match=str(path)):
            decode_clip(path, [85, 89], backend=backend)


def test_synthetic_sample_script_is_deterministic(tmp_path):
    from make_synthetic_surgvu import main

    for name, workers in (("a", "2"), ("b", "1")):  # in parallel or not, the same sample
        arguments = ["--out", str(tmp_path / name), "--num_cases", "2", "--seconds", "3", "--seed", "7"]
        assert main(arguments + ["--no_unlabeled_case", "--num_workers", workers]) == 0
    for case_id in ("case_000", "case_001"):  # case_001: two parts and a truncated third
        for relative in (f"labels/{case_id}/tools.csv", f"labels/{case_id}/tasks.csv"):
            text = (tmp_path / "a" / relative).read_text()
            assert text == (tmp_path / "b" / relative).read_text()
            assert ",-" not in text  # no negative time, even where a spanning interval starts within 6 s of 0
    assert (tmp_path / "a/synthetic_manifest.json").read_text() == (tmp_path / "b/synthetic_manifest.json").read_text()
    frames = [decode_first(tmp_path / name / "surgvu24/case_000/case_000_video_part_001.mp4") for name in "ab"]
    np.testing.assert_array_equal(frames[0], frames[1])
    assert (tmp_path / "a" / "__MACOSX").is_dir()


def decode_first(path):
    import av

    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")
