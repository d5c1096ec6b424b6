"""scripts/demo.py's commands (`make demo`), without running them: what each step is asked for, and the sample of an
earlier run reused only when it is the one asked for."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def demo(monkeypatch):
    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    commands = []

    class Stop(Exception):
        pass

    def run(args, cwd=None, **env):
        commands.append(list(args))
        if "train_hf.py" in args:
            raise Stop  # the rest needs a trained model

    monkeypatch.setattr(module, "run", run)

    def main(*argv):
        monkeypatch.setattr(sys, "argv", ["demo.py", *argv])
        with pytest.raises(Stop):
            module.main()
        return commands

    return main


def argument(command, flag):
    return command[command.index(flag) + 1] if flag in command else None


def test_the_demo_writes_24_cases_and_trains_16_epochs_with_each_action_at_its_place(demo, tmp_path):
    commands = demo("--output_dir", str(tmp_path / "out"), "--seed", "1")
    sample = next(c for c in commands if "scripts/make_synthetic_surgvu.py" in c)
    train = next(c for c in commands if "train_hf.py" in c)
    assert (argument(sample, "--num_cases"), argument(sample, "--seed")) == ("24", "1")
    assert (argument(train, "--num_epochs"), argument(train, "--clip_stride")) == ("16", "4")
    assert argument(train, "--config_overrides") == "action_spatial_embedding=true"


def test_the_demo_before_it_is_one_command_away(demo, tmp_path):
    commands = demo("--output_dir", str(tmp_path / "out"), "--num_cases", "12", "--num_epochs", "32",
                    "--config_overrides", "")
    sample = next(c for c in commands if "scripts/make_synthetic_surgvu.py" in c)
    train = next(c for c in commands if "train_hf.py" in c)
    assert argument(sample, "--num_cases") == "12" and argument(train, "--num_epochs") == "32"
    assert "--config_overrides" not in train


def test_a_sample_of_another_size_or_seed_stops_the_demo_before_anything_runs(tmp_path):
    import subprocess

    data = tmp_path / "out" / "surgvu"
    data.mkdir(parents=True)
    cases = {f"case_{number:03d}": {} for number in range(12)}
    (data / "synthetic_manifest.json").write_text(json.dumps({"seed": 0, "cases": cases}))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1
    assert str(data / "synthetic_manifest.json") in done.stderr and "12 cases of seed 0" in done.stderr
    assert "asks for 24 of seed 0" in done.stderr and f"remove {tmp_path / 'out'} " in done.stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["surgvu"]  # nothing else was started
