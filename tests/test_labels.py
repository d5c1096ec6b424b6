"""Malformed SurgVU label files: every bad value is skipped with a warning naming the file, line and value, or the
file is refused in one line; never a traceback, never a hang."""

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from dataset_surgvu import SurgVULabelError, UnusableLabelFileError
from dataset_surgvu.labels import labels_at, part_offsets, read_case_labels, read_tasks_csv, read_tools_csv


TOOLS_HEADER = (
    "index,install_case_part,install_case_time,uninstall_case_part,uninstall_case_time,arm,commercial_toolname,"
    "groundtruth_toolname"
)
TOOLS_GOOD = "0,1.0,00:00:10.000000,2.0,00:00:20.000000,USM1,Large Needle Driver,needle driver"
TASKS_HEADER = "index,start_part,start_time,stop_part,stop_time,groundtruth_taskname"
TASKS_GOOD = "0,1,3.5,2,7.25,Suturing"

# (file, the bad line written as line 3 below a good row, the value the warning must show, the noise kind counted)
BAD_ROWS = {
    "time nan": ("tasks", "1,1,nan,1,40.0,Suturing", "'nan'", "bad_time"),
    "time inf": ("tools", "1,1.0,inf,1.0,00:00:20,USM2,x,cadiere forceps", "'inf'", "bad_time"),
    "time negative": ("tasks", "1,1,-1.5,1,40.0,Suturing", "'-1.5'", "bad_time"),
    "time huge": ("tasks", "1,1,1e300,1,40.0,Suturing", "'1e300'", "bad_time"),
    "time unparseable": ("tools", "1,1.0,00:0x:10,1.0,00:00:20,USM2,x,cadiere forceps", "'00:0x:10'", "bad_time"),
    "part inf": ("tools", "1,inf,00:00:01,1.0,00:00:20,USM2,x,cadiere forceps", "'inf'", "bad_part"),
    "part huge": ("tasks", "1,1,0.0,1e9,5.0,Suturing", "'1e9'", "bad_part"),
    "part negative": ("tasks", "1,-1,0.0,1,5.0,Suturing", "'-1'", "bad_part"),
    "part nan": ("tools", "1,1.0,00:00:01,nan,00:00:20,USM2,x,cadiere forceps", "'nan'", "bad_part"),
    "part fraction": ("tasks", "1,1.5,0.0,2,5.0,Suturing", "'1.5'", "bad_part"),
    "part unparseable": ("tasks", "1,one,0.0,2,5.0,Suturing", "'one'", "bad_part"),
    "part without video": ("tools", "1,2.0,00:00:01,3.0,00:00:20,USM2,x,cadiere forceps", "part 3",
                           "part_without_video"),
    "reversed interval": ("tasks", "1,2,40.0,1,50.0,Suturing", "(part 1, 50s) before it starts (part 2, 40s)",
                          "reversed_interval"),
    "too few fields": ("tools", "1,1.0,00:00:01,1.0,00:00:20", "'1,1.0,00:00:01,1.0,00:00:20'", "too_few_fields"),
    "not UTF-8": ("tasks", b"1,1,0.0,1,5.0,Sutur\xe9ing", r"\xe9", "not_utf8"),
    "field over the CSV limit": ("tasks", "1,1,0.0,1,5.0," + "x" * 200_000, "'1,1,0.0,1,5.0,xxx",
                                 "unreadable_row"),
}
BAD_KINDS = {kind for *_, kind in BAD_ROWS.values()}


def _write(folder: Path, tools_lines: list, tasks_lines: list) -> tuple[Path, Path]:
    """tools.csv and tasks.csv from lists of lines (str, or bytes written as they are)."""
    paths = folder / "tools.csv", folder / "tasks.csv"
    for path, lines in zip(paths, (tools_lines, tasks_lines)):
        path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return paths


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_is_skipped_with_a_warning_naming_file_line_and_value(case, tmp_path, caplog):
    kind, bad_line, shown, noise_kind = BAD_ROWS[case]
    lines = {"tools": [TOOLS_HEADER, TOOLS_GOOD], "tasks": [TASKS_HEADER, TASKS_GOOD]}
    lines[kind].append(bad_line)
    tools_csv, tasks_csv = _write(tmp_path, lines["tools"], lines["tasks"])
    with caplog.at_level(logging.WARNING, logger="dataset_surgvu"):
        labels = read_case_labels(tools_csv, tasks_csv, parts=[1, 2])
    assert len(labels.tools) == len(labels.tasks) == 1  # the good rows only
    assert (labels.tools[0].start_time, labels.tasks[0].stop_time) == (10.0, 7.25)
    bad_file = tools_csv if kind == "tools" else tasks_csv
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and messages[0].startswith(f"{bad_file}:3: skipping"), messages
    assert shown in messages[0] and "\n" not in messages[0] and len(messages[0]) < 400
    skipped = {key: count for key, count in labels.noise.items() if key.split("/")[1] in BAD_KINDS}
    assert skipped == {f"{kind}/{noise_kind}": 1}


def test_a_case_timeline_is_sized_by_the_parts_named_not_by_the_largest_number(tmp_path):
    """Part 999 (the largest accepted) costs three offsets, not a thousand, and its labels still land in it."""
    tools_csv, tasks_csv = _write(tmp_path, [TOOLS_HEADER, TOOLS_GOOD], [TASKS_HEADER, "0,999,1.0,999,3.0,Suturing"])
    labels = read_case_labels(tools_csv, tasks_csv)
    offsets = part_offsets(labels, {1: 30.0, 2: 30.0})
    assert offsets == {1: 0.0, 2: 30.0, 999: 60.0}  # the parts back to back; those named by nothing have no extent
    _, tasks = labels_at(labels, offsets, 999, [0.5, 1.0, 2.9, 3.0])
    assert tasks.tolist() == [7, 5, 5, 7]


def test_a_header_without_rows_is_a_case_without_segments_or_tools(tmp_path, caplog):
    tools_csv, tasks_csv = _write(tmp_path, [TOOLS_HEADER], [TASKS_HEADER])
    with caplog.at_level(logging.WARNING, logger="dataset_surgvu"):
        labels = read_case_labels(tools_csv, tasks_csv)
    assert labels.tools == [] and labels.tasks == []
    assert labels.noise == {"tools/no_rows": 1, "tasks/no_rows": 1}
    messages = [record.getMessage() for record in caplog.records]
    assert [message.split(":")[0] for message in messages] == [str(tools_csv), str(tasks_csv)]


@pytest.mark.parametrize(
    "content, unusable, named",
    [
        (b"", True, "the file is empty"),
        (b"\n  \n", True, "the file is empty"),
        (None, True, "cannot be read"),  # a folder where the file should be: an OSError
        (f"{TASKS_HEADER}\n1,1,nan,1,40.0,Suturing\n1,inf,0,1,4,Suturing\n".encode(), True, "every row was skipped"),
        (b"index,start_section,start_time,stop_section,stop_time,groundtruth_taskname\n0,1,0,1,5,Suturing\n", False,
         "missing columns ['start_part', 'stop_part']"),
        (b"\xff\xfe\x00i\x00n\x00d\x00e\x00x\x00\n", False, "the header is not a line of UTF-8 CSV"),
    ],
    ids=["empty", "blank lines", "unreadable", "every row bad", "missing column", "header not UTF-8"],
)
def test_a_file_without_anything_usable_or_of_another_format_is_refused_in_one_line(content, unusable, named,
                                                                                     tmp_path):
    path = tmp_path / "tasks.csv"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(SurgVULabelError) as error:
        read_tasks_csv(path)
    assert isinstance(error.value, UnusableLabelFileError) == unusable
    message = str(error.value)
    assert message.startswith(f"{path}: ") and named in message and "\n" not in message


def test_tools_without_any_tool_class_row_are_still_read(tmp_path):
    """Rows that are not a tool (camera in, out of class) are intervals without a class, not skipped rows."""
    path = tmp_path / "tools.csv"
    path.write_text(f"{TOOLS_HEADER}\n0,1.0,00:00:01,1.0,00:00:02,USM3,,nan(camera in)\n")
    (interval,) = read_tools_csv(path)
    assert interval.class_index is None and interval.arm == 2


# -- end to end: the builder and the training script on a copy of the synthetic sample with bad label files ---------
def _copy_with_bad_labels(root: Path, target: Path, tools: str, tasks: bytes | None) -> Path:
    """A copy of the sample (videos linked) whose case_001 gets `tools` written into its tools.csv (replacing it)
    and `tasks` appended to its tasks.csv."""
    for path in root.rglob("*"):
        destination = target / path.relative_to(root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".mp4":
            os.symlink(path, destination)
        elif path.is_file():
            shutil.copy(path, destination)
    labels = target / "labels" / "case_001"
    (labels / "tools.csv").write_text(tools)
    if tasks is not None:
        with open(labels / "tasks.csv", "ab") as handle:
            handle.write(tasks)
    return labels


def _run(code_or_script: list[str]) -> subprocess.CompletedProcess:
    environment = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": REPO_ROOT}
    return subprocess.run([sys.executable, *code_or_script], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env=environment)


def test_building_with_bad_rows_and_an_empty_file_names_them_and_finishes(surgvu_sample, tmp_path):
    root, manifest = surgvu_sample
    bad_tasks = b"7,1,nan,1,4.0,Suturing\n8,inf,0.0,1,4.0,Suturing\n9,1,0.0,1e9,4.0,Suturing\n10,1,0.5,1,0.0,x\n\xff\n"
    labels = _copy_with_bad_labels(root, tmp_path / "copy", tools=(root / "labels/case_001/tools.csv").read_text(),
                                   tasks=bad_tasks)
    (tmp_path / "copy/labels/case_000/tools.csv").write_bytes(b"")
    code = (
        "import sys; from dataset_surgvu import load_surgvu, get_build_metadata; "
        "m = get_build_metadata(load_surgvu(sys.argv[1], cache_dir=sys.argv[2])); "
        "print('cases', *m['train_cases'], *m['validation_cases']); print('without', *m['cases_without_labels'])"
    )
    result = _run(["-c", code, str(tmp_path / "copy"), str(tmp_path / "cache")])
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    tasks_csv, lines = labels / "tasks.csv", len((root / "labels/case_001/tasks.csv").read_bytes().splitlines())
    for offset, value in enumerate(["'nan'", "'inf'", "'1e9'", "before it starts", r"b'\xff'"], start=1):
        assert any(f"{tasks_csv}:{lines + offset}:" in line and value in line for line in result.stderr.splitlines())
    assert f"{tmp_path / 'copy/labels/case_000/tools.csv'}: the file is empty" in result.stderr
    summary = [line for line in result.stderr.splitlines() if "label files:" in line]
    assert len(summary) == 1 and "5 malformed row(s) skipped" in summary[0] and "1 unusable file(s)" in summary[0]
    unlabeled = sorted(["case_000", *(c for c, case in manifest["cases"].items() if not case["labeled"])])
    assert f"without {' '.join(unlabeled)}" in result.stdout.splitlines()
    assert "case_001" in result.stdout.splitlines()[0]  # its good rows still label it


def test_training_on_a_label_file_of_another_format_stops_with_one_line(surgvu_sample, world_model_dir, tmp_path):
    root, _ = surgvu_sample
    tools = (root / "labels/case_001/tools.csv").read_text().replace("install_case_part", "install_part", 1)
    labels = _copy_with_bad_labels(root, tmp_path / "copy", tools=tools, tasks=None)
    result = _run(["train_hf.py", "--data_root", str(tmp_path / "copy"), "--dataset_cache_dir", str(tmp_path / "cache"),
                   "--pretrained_checkpoint", world_model_dir, "--output_dir", str(tmp_path / "out"),
                   "--device", "cpu", "--report_to", "none"])
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {labels / 'tools.csv'}: missing columns")
