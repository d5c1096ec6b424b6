"""scripts/check_setup.py: passes on this machine, fails (exit 1, with the reason) on what blocks training."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import no_ffmpeg
from dataset_surgvu.synthetic import make_synthetic_surgvu
from dataset_surgvu.video import BACKEND_ENV, select_backend
from tests.hub_server import LoopbackHub

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_setup.py"


def run_check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
    )


def run_json(*args: str, env: dict | None = None) -> tuple[int, dict]:
    result = run_check("--json", *args, env=env)
    try:
        return result.returncode, json.loads(result.stdout)
    except ValueError:
        output = f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        raise AssertionError(f"--json output does not parse:\n{output}") from None


def load_script():
    """check_setup.py as a module, for the checks that need no subprocess."""
    spec = importlib.util.spec_from_file_location("check_setup", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_setup"] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def checks_named(report: dict, section: str) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"] if c["section"] == section}


def test_passes_on_this_machine_and_never_prints_the_token(tmp_path):
    with LoopbackHub() as hub:  # a reachable "Hub" with a token configured, so the token could leak if printed
        result = run_check(env=hub.env(hf_home=tmp_path / "hf_home"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"check_setup failed on this machine:\n{output[-3000:]}"
    assert "Nothing blocks training" in result.stdout
    assert hub.token not in output
    lines = result.stdout.splitlines()
    for package in ("python", "torch", "torchvision", "transformers", "accelerate", "datasets", "huggingface_hub",
                    "safetensors", "evaluate"):
        assert any(line.startswith(f"[  ok] {package}: ") for line in lines), f"no ok line for {package}"
    for device in ("cpu", "cuda", "mps"):
        assert any(line.split("] ")[-1].startswith(f"{device}: ") for line in lines), f"no line for {device}"
    backend = select_backend().name  # what the data loader uses on this machine
    assert any(line.split("] ")[-1].startswith(f"backend: {backend} (") for line in lines), "no backend line"
    assert f"[  ok] decode test: {backend} decoded 8 frames of a test clip" in lines
    assert "Traceback" not in output
    hub_line = next(line for line in lines if "] reachability: " in line)
    assert hub_line.startswith("[  ok]") and hub.endpoint in hub_line and "a token is configured" in hub_line


@pytest.fixture()
def corrupt_checkpoint(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "surgical_wm"}))
    save_file({"weight": np.ones((4, 4), dtype=np.float32)}, str(checkpoint / "good.safetensors"))
    intact = (checkpoint / "good.safetensors").read_bytes()
    (checkpoint / "truncated.safetensors").write_bytes(intact[:-16])
    (checkpoint / "model.safetensors").write_bytes(b"\x00" * 7 + b"not a safetensors header")
    return checkpoint


@pytest.fixture()
def empty_data(tmp_path):
    folder = tmp_path / "surgvu"
    folder.mkdir()
    return folder


def test_command_line_exits_1_with_the_blockers(corrupt_checkpoint, empty_data):
    code, report = run_json("--skip_hub", "--checkpoint", str(corrupt_checkpoint), "--data_root", str(empty_data))
    assert code == 1 and not report["ok"]
    checks = checks_named(report, "checkpoint")
    assert checks["config.json"]["status"] == "ok"
    assert checks["good.safetensors"]["status"] == "ok"
    assert checks["model.safetensors"]["status"] == "fail"
    assert checks["truncated.safetensors"]["status"] == "fail"
    assert checks_named(report, "data")["folder"]["status"] == "fail"
    assert any(b.startswith("checkpoint/model.safetensors") for b in report["blockers"])
    assert any(b.startswith("data/folder") and "is empty" in b for b in report["blockers"])


@pytest.mark.parametrize("problem", ["corrupt_checkpoint", "empty_data"])
def test_each_blocker_alone_fails(problem, request, capsys):
    """Each problem on its own makes main() return 1 (in-process: the imports are paid once)."""
    check_setup = load_script()
    path = request.getfixturevalue(problem)
    flag = "--checkpoint" if problem == "corrupt_checkpoint" else "--data_root"
    assert check_setup.main(["--skip_hub", flag, str(path)]) == 1
    output = capsys.readouterr().out
    assert "block training" in output
    assert ("model.safetensors" in output) if problem == "corrupt_checkpoint" else ("is empty" in output)


def test_checkpoint_without_safetensors_or_config_blocks_training(tmp_path):
    check_setup = load_script()
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickled")
    report = check_setup.Report()
    check_setup.check_checkpoint(report, str(tmp_path))
    statuses = {c.name: c.status for c in report.checks}
    assert statuses == {"config.json": "fail", "weights": "fail"}
    assert "never unpickles" in report.blockers[-1].detail


def test_synthetic_surgvu_folder_is_reported(tmp_path):
    """The data check on a real SurgVU-format folder, through dataset_surgvu.scan_surgvu."""
    check_setup = load_script()

    make_synthetic_surgvu(tmp_path, num_cases=2, width=64, height=48, fps=8, seconds=30)
    report = check_setup.Report()
    check_setup.check_data(report, str(tmp_path), None)
    checks = {c.name: c for c in report.checks}
    assert checks["cases"].status == "ok" and "2 case(s)" in checks["cases"].detail
    assert checks["label files"].status == "warn"  # the sample has one case without labels, on purpose
    assert checks["label noise"].status == "info"
    assert any(c.name == "unreadable video" for c in report.checks)  # and one corrupt video
    assert not report.blockers


def without_ffmpeg_env(backend: str = "") -> dict:
    """A machine without FFmpeg's shared libraries for torchcodec (tests/no_ffmpeg), a backend forced or not."""
    return {**os.environ, "PYTHONPATH": no_ffmpeg.pythonpath(), BACKEND_ENV: backend}


def test_reports_the_pyav_fallback_without_ffmpeg_in_one_line():
    result = run_check("--skip_hub", env=without_ffmpeg_env())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    backend_lines = [line for line in result.stdout.splitlines() if "] backend: " in line]
    assert len(backend_lines) == 1 and backend_lines[0].startswith("[warn] backend: pyav (torchcodec cannot load")
    assert "libavutil.so." in backend_lines[0] and "apt-get install ffmpeg" in backend_lines[0]
    assert "[  ok] decode test: pyav decoded 8 frames of a test clip" in result.stdout
    assert "Traceback" not in output and "Could not load libtorchcodec" not in output  # no traceback wall
    assert "decoding video with PyAV" not in output  # the library's warning is not printed again


@pytest.mark.parametrize("backend", ["torchcodec", "ffmpeg"])
def test_a_forced_backend_that_cannot_decode_blocks_training(backend):
    code, report = run_json("--skip_hub", env=without_ffmpeg_env(backend))
    assert code == 1 and not report["ok"]
    check = checks_named(report, "video")["backend"]
    assert check["status"] == "fail" and check["detail"].startswith(f"{BACKEND_ENV}=")
    if backend == "torchcodec":
        assert "libavutil.so." in check["detail"] and "apt-get install ffmpeg" in check["detail"]
    else:
        assert "is not a video backend" in check["detail"]
    assert report["blockers"] == [f"video/backend: {check['detail']}"]


def test_forced_pyav_is_ok_without_ffmpeg():
    code, report = run_json("--skip_hub", env=without_ffmpeg_env("pyav"))
    checks = checks_named(report, "video")
    assert code == 0 and report["ok"]
    assert (checks["backend"]["status"], checks["backend"]["detail"]) == ("ok", f"pyav ({BACKEND_ENV}=pyav)")
    assert checks["decode test"]["status"] == "ok"
