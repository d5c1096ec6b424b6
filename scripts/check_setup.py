#!/usr/bin/env python
"""Check that this machine can train the surgical world model: packages, devices, video decoding, Hub, data, checkpoint.

    python scripts/check_setup.py
    python scripts/check_setup.py --data_root data/surgvu --checkpoint checkpoints/vjepa2-vitl
    python scripts/check_setup.py --json > setup.json

Every check prints one line: `ok`, `info`, `warn` (worth knowing, training still runs) or `FAIL` (blocks
training). The exit status is 0 when nothing blocks training and 1 otherwise, with the blockers summarised at
the end. Nothing here downloads weights, unpickles files (checkpoints are opened with `safetensors.safe_open`
only) or prints a token: the Hub check sends no credentials and only reports whether a token is configured.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

# package import name -> why training needs it. Missing any of these blocks training.
REQUIRED_PACKAGES = {
    "torch": "the model and the training loop",
    "torchvision": "clip preprocessing (dataset_surgvu.transforms)",
    "transformers": "the V-JEPA 2 encoder, PreTrainedModel, save/load",
    "accelerate": "the launcher, devices, mixed precision, checkpoints",
    "datasets": "the SurgVU dataset builder",
    "huggingface_hub": "downloads and --push_to_hub",
    "safetensors": "weights on disk",
}
OPTIONAL_PACKAGES = {"evaluate": "metrics in evaluation scripts"}

STATUSES = ("ok", "info", "warn", "fail")


@dataclass
class Check:
    section: str
    name: str
    status: str  # one of STATUSES
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, section: str, name: str, status: str, detail: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self.checks.append(Check(section, name, status, detail))

    @property
    def blockers(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    def to_dict(self) -> dict:
        return {
            "ok": not self.blockers,
            "checks": [asdict(c) for c in self.checks],
            "blockers": [f"{c.section}/{c.name}: {c.detail}" for c in self.blockers],
            "warnings": [f"{c.section}/{c.name}: {c.detail}" for c in self.warnings],
        }

    def print_text(self) -> None:
        labels = {"ok": "  ok", "info": "info", "warn": "warn", "fail": "FAIL"}
        section = None
        for check in self.checks:
            if check.section != section:
                section = check.section
                print(f"\n== {section}")
            print(f"[{labels[check.status]}] {check.name}: {check.detail}")
        print()
        if self.blockers:
            print(f"{len(self.blockers)} problem(s) block training:")
            for check in self.blockers:
                print(f"  - {check.section}/{check.name}: {check.detail}")
        else:
            warned = f" ({len(self.warnings)} warning(s) above)" if self.warnings else ""
            print(f"Nothing blocks training{warned}.")


# -- packages ---------------------------------------------------------------------------------------------------
def check_packages(report: Report) -> dict:
    report.add("versions", "python", "ok", f"{platform.python_version()} ({sys.executable})")
    modules = {}
    for packages, missing_status in ((REQUIRED_PACKAGES, "fail"), (OPTIONAL_PACKAGES, "warn")):
        for name, purpose in packages.items():
            try:
                module = importlib.import_module(name)
            except Exception as error:  # ImportError, or a broken install raising something else
                detail = f"cannot import ({type(error).__name__}: {error}); needed for {purpose}"
                report.add("versions", name, missing_status, detail)
                continue
            modules[name] = module
            report.add("versions", name, "ok", str(getattr(module, "__version__", "unknown version")))
    return modules


# -- devices ----------------------------------------------------------------------------------------------------
def check_devices(report: Report, torch) -> None:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    report.add("devices", "cpu", "ok", f"{cores} core(s) available to this process ({platform.machine()})")
    if torch is None:
        report.add("devices", "cuda", "fail", "torch is missing, so no device can be used")
        return
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        names = ", ".join(
            f"{i}: {torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
            for i in range(count)
        )
        bf16 = "bf16 supported" if torch.cuda.is_bf16_supported() else "no bf16: use --mixed_precision fp16 or no"
        report.add("devices", "cuda", "ok", f"{count} GPU(s): {names}; {bf16}; CUDA {torch.version.cuda}")
    else:
        built = f"torch built with CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only torch build"
        report.add("devices", "cuda", "info", f"no CUDA device ({built})")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        report.add("devices", "mps", "ok", "Apple MPS available (--device mps)")
    else:
        report.add("devices", "mps", "info", "not available")
    if not torch.cuda.is_available() and not (mps is not None and mps.is_available()):
        report.add("devices", "accelerator", "warn", "no GPU/MPS: training runs on the CPU (fine for the demo only)")


# -- FFmpeg and video decoding ------------------------------------------------------------------------------------
def check_ffmpeg(report: Report) -> str | None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        detail = "not on PATH (not needed: what decoding needs is in the backend line below)"
        report.add("video", "ffmpeg binary", "info", detail)
        return None
    try:
        first_line = subprocess.run(
            [ffmpeg, "-hide_banner", "-version"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[0]
        report.add("video", "ffmpeg binary", "ok", f"{first_line} ({ffmpeg})")
    except (OSError, subprocess.SubprocessError, IndexError) as error:
        report.add("video", "ffmpeg binary", "warn", f"{ffmpeg} does not run: {error}")
        return None
    return ffmpeg


def _write_test_video(path: Path, ffmpeg: str | None, av) -> str | None:
    """A 16-frame 64x64 MPEG-4 clip for the decode checks; returns None when it cannot be made."""
    if av is not None:
        try:
            import numpy as np

            with av.open(str(path), "w") as container:
                stream = container.add_stream("mpeg4", rate=8)
                stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
                for index in range(16):
                    image = np.full((64, 64, 3), index * 12, dtype=np.uint8)
                    for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
            return None
        except Exception as error:
            if ffmpeg is None:
                return f"PyAV could not write a test video: {error}"
    if ffmpeg is None:
        return "neither PyAV nor an ffmpeg binary is available to write a test video"
    result = subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=8",
         "-frames:v", "16", "-c:v", "mpeg4", "-pix_fmt", "yuv420p", str(path)],
        capture_output=True, text=True, timeout=30,
    )
    return None if result.returncode == 0 else f"ffmpeg could not write a test video: {result.stderr.strip()[-300:]}"


def check_video_backends(report: Report, ffmpeg: str | None) -> None:
    """PyAV and torchcodec versions, then the backend the data loader will really use (chosen by
    `dataset_surgvu.video.select_backend`, as in training) and a decode of a test clip with it."""
    try:
        import av
    except Exception as error:
        av = None
        detail = f"cannot import ({type(error).__name__}: {error}); dataset_surgvu reads every video with it"
        report.add("video", "PyAV", "fail", detail)
    else:
        libraries = av.library_versions
        versions = ", ".join(
            f"{lib} {'.'.join(map(str, libraries[lib]))}" for lib in ("libavcodec", "libavformat") if lib in libraries
        )
        bundled = getattr(av, "ffmpeg_version_info", "unknown")
        report.add("video", "PyAV", "ok", f"{av.__version__}, bundled FFmpeg {bundled} ({versions})")

    try:
        import torchcodec
    except Exception as error:  # optional: without it, PyAV decodes
        report.add("video", "torchcodec", "info", f"cannot import ({type(error).__name__}: {error}); optional")
    else:
        report.add("video", "torchcodec", "ok", str(getattr(torchcodec, "__version__", "unknown version")))

    try:
        from dataset_surgvu.video import BACKEND_ENV, decode_clip, select_backend
    except Exception as error:
        report.add("video", "backend", "fail", f"cannot import dataset_surgvu.video ({type(error).__name__}: {error})")
        return
    # The report line below says what the fallback warning would say; without a handler logging prints it again.
    logging.getLogger("dataset_surgvu.video").addHandler(logging.NullHandler())
    try:
        backend, reason = select_backend()
    except (ValueError, RuntimeError) as error:  # an invalid value, or a forced backend that cannot decode here
        report.add("video", "backend", "fail", str(error))
        return
    fallback = backend == "pyav" and not reason.startswith(BACKEND_ENV)
    report.add("video", "backend", "warn" if fallback else "ok", f"{backend} ({reason})")

    with tempfile.TemporaryDirectory(prefix="check_setup_") as tmp:
        video = Path(tmp) / "test.mp4"
        problem = _write_test_video(video, ffmpeg, av)
        if problem is not None:
            report.add("video", "decode test", "warn", problem)
            return
        try:
            frames = decode_clip(video, list(range(0, 16, 2)), backend=backend)
            if tuple(frames.shape) != (8, 64, 64, 3):
                raise RuntimeError(f"decoded shape {tuple(frames.shape)}, expected (8, 64, 64, 3)")
        except Exception as error:
            detail = f"{backend} failed on a test clip ({type(error).__name__}: {error}): SurgVU cannot be read"
            report.add("video", "decode test", "fail", detail)
            return
        report.add("video", "decode test", "ok", f"{backend} decoded 8 frames of a test clip")


# -- Hub ----------------------------------------------------------------------------------------------------------
def check_hub(report: Report, timeout: float) -> None:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        from huggingface_hub import get_token

        token_state = "a token is configured" if get_token() else "no token configured (needed for --push_to_hub)"
    except Exception:
        token_state = "token state unknown"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        report.add("hub", "reachability", "info", f"HF_HUB_OFFLINE is set: only cached files are used; {token_state}")
        return
    request = urllib.request.Request(endpoint, method="HEAD")  # deliberately without credentials
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as error:  # the server answered: it is reachable
        status = error.code
    except Exception as error:
        reason = getattr(error, "reason", error)
        report.add(
            "hub",
            "reachability",
            "warn",
            f"{endpoint} not reachable ({reason}); use local checkpoints or set HF_HUB_OFFLINE=1; {token_state}",
        )
        return
    report.add("hub", "reachability", "ok", f"{endpoint} answered HTTP {status}; {token_state}")


# -- data ---------------------------------------------------------------------------------------------------------
def check_data(report: Report, data_root: str, labels_dir: str | None) -> None:
    root = Path(data_root).expanduser()
    if not root.is_dir():
        report.add("data", "folder", "fail", f"{root} is not a folder")
        return
    if not any(root.iterdir()):
        report.add("data", "folder", "fail", f"{root} is empty (expected surgvu24/case_NNN/... and labels/)")
        return
    try:
        from dataset_surgvu import scan_surgvu
    except ImportError as error:
        report.add("data", "scan", "fail", f"cannot import dataset_surgvu.scan_surgvu ({error})")
        return
    try:
        scan = scan_surgvu(root, labels_dir)
    except FileNotFoundError as error:
        report.add("data", "folder", "fail", str(error))
        return
    except Exception as error:
        report.add("data", "scan", "fail", f"scanning {root} failed: {type(error).__name__}: {error}")
        return

    num_cases, num_videos = scan.get("num_cases", 0), scan.get("num_videos", 0)
    hours = scan.get("total_hours", 0.0)
    if num_cases == 0 or num_videos == 0:
        report.add("data", "cases", "fail", f"no case with videos found under {scan.get('videos_dir', root)}")
        return
    detail = f"{num_cases} case(s), {num_videos} video part(s), {hours:.2f} h in {scan.get('videos_dir')}"
    report.add("data", "cases", "ok", detail)
    labelled = num_cases - len(scan.get("cases_without_labels", []))
    label_state = f"{labelled}/{num_cases} case(s) have tools.csv and tasks.csv in {scan.get('labels_dir')}"
    report.add("data", "label files", "ok" if labelled == num_cases else "warn", label_state)
    if labelled == 0:
        detail = "no labels at all: only a pure video world model (no actions) can be trained"
        report.add("data", "actions", "warn", detail)
    for case_id, error in sorted(scan.get("label_errors", {}).items()):
        report.add("data", f"labels {case_id}", "warn", error)
    orphans = scan.get("label_dirs_without_videos", [])
    if orphans:
        report.add("data", "labels without videos", "warn", ", ".join(orphans))
    noise = scan.get("label_noise", {})
    if noise:
        report.add("data", "label noise", "info", ", ".join(f"{kind}: {count}" for kind, count in noise.items()))
    else:
        report.add("data", "label noise", "ok", "none found")
    corrupt = scan.get("corrupt_videos", {})
    for video, error in sorted(corrupt.items()):
        detail = error if str(error).startswith(video) else f"{video}: {error}"
        report.add("data", "unreadable video", "warn", f"{detail} (skipped by the dataset)")
    if corrupt and len(corrupt) >= num_videos:
        report.add("data", "videos", "fail", "every video is unreadable")


# -- checkpoint ---------------------------------------------------------------------------------------------------
def _open_safetensors(path: Path) -> str:
    """Open the header with safe_open (no unpickling) and check that every tensor lies inside the file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata() or {}
        if keys:  # reading the smallest tensor proves the data section is there too
            smallest = min(keys, key=lambda k: _numel(handle.get_slice(k).get_shape()))
            handle.get_slice(smallest)[...]
    fmt = f", format={metadata['format']}" if "format" in metadata else ""
    return f"{len(keys)} tensor(s){fmt}"


def _numel(shape) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def check_checkpoint(report: Report, checkpoint: str) -> None:
    directory = Path(checkpoint).expanduser()
    if not directory.is_dir():
        detail = f"{directory} is not a folder (a facebook/vjepa2-* id is resolved by the training script, not here)"
        report.add("checkpoint", "folder", "fail", detail)
        return
    config_path = directory / "config.json"
    if not config_path.is_file():
        report.add("checkpoint", "config.json", "fail", f"missing in {directory}")
    else:
        try:
            config = json.loads(config_path.read_text())
            if not isinstance(config, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as error:
            report.add("checkpoint", "config.json", "fail", f"does not parse: {error}")
        else:
            detail = f"model_type={config.get('model_type', '?')}, architectures={config.get('architectures')}"
            report.add("checkpoint", "config.json", "ok", detail)
            for auto_class, reference in (config.get("auto_map") or {}).items():
                reference = reference[0] if isinstance(reference, list) else reference
                if isinstance(reference, str) and "--" not in reference:  # a local module, not another repo
                    module_file = directory / (reference.rsplit(".", 1)[0] + ".py")
                    if not module_file.is_file():
                        detail = f"{module_file.name} is missing (trust_remote_code needs it)"
                        report.add("checkpoint", f"auto_map {auto_class}", "fail", detail)

    index_path = directory / "model.safetensors.index.json"
    weight_files = sorted(directory.glob("*.safetensors"))
    if index_path.is_file():
        try:
            shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as error:
            report.add("checkpoint", index_path.name, "fail", f"does not parse: {error}")
            shards = []
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            report.add("checkpoint", index_path.name, "fail", f"shards missing: {', '.join(missing)}")
    if not weight_files:
        pickled = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt*"))
        hint = ""
        if pickled:
            hint = f" (only pickle files {pickled}: convert them to safetensors; this check never unpickles)"
        report.add("checkpoint", "weights", "fail", f"no *.safetensors file in {directory}{hint}")
        return
    for weights in weight_files:
        try:
            report.add("checkpoint", weights.name, "ok", _open_safetensors(weights))
        except Exception as error:
            detail = f"unreadable safetensors file: {type(error).__name__}: {error}"
            report.add("checkpoint", weights.name, "fail", detail)


# -- main -----------------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_root", help="SurgVU folder (holding surgvu24/ and labels/) to scan")
    parser.add_argument("--labels_dir", help="labels folder when it is not <data_root>/labels")
    parser.add_argument("--checkpoint", help="a saved model folder (config.json + *.safetensors) to check")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--hub_timeout", type=float, default=3.0, help="seconds to wait for the Hub (default 3)")
    parser.add_argument("--skip_hub", action="store_true", help="do not contact the Hub")
    return parser.parse_args(argv)


def run_checks(args: argparse.Namespace) -> Report:
    report = Report()
    modules = check_packages(report)
    check_devices(report, modules.get("torch"))
    ffmpeg = check_ffmpeg(report)
    check_video_backends(report, ffmpeg)
    if args.skip_hub:
        report.add("hub", "reachability", "info", "skipped (--skip_hub)")
    else:
        check_hub(report, args.hub_timeout)
    if args.data_root is not None:
        check_data(report, args.data_root, args.labels_dir)
    if args.checkpoint is not None:
        check_checkpoint(report, args.checkpoint)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run_checks(args)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        report.print_text()
    return 1 if report.blockers else 0


if __name__ == "__main__":
    sys.exit(main())
