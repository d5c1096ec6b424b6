"""The demo page (scripts/app.py) in a real browser: served on 127.0.0.1, driven by Playwright in headless Chromium.

Playwright's own browser download needs the internet: the system's Chromium is used (`apt-get install chromium`,
which .ci/run does). Without one the tests are skipped; without the playwright or gradio package they fail (both are
in the dev and app extras).
"""

import itertools
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import TINY_PREDICTOR


CHROMIUM = next((path for path in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if path and os.path.isfile(path)), None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (apt-get install chromium; .ci/run installs it)"),
]
TIMEOUT_MS = 120_000  # the analysis of a 20 s video on 2 busy CPU cores

# The rows of Gradio's dataframe are virtual: only those in view exist. Scroll through it and collect every row's cells.
ROWS_JS = """async (id) => {
    const viewport = document.querySelector(`#${id} .virtual-table-viewport`);
    const rows = new Map();
    for (let top = 0; ; top += viewport.clientHeight / 2) {
        viewport.scrollTop = top;
        await new Promise(resolve => requestAnimationFrame(() => requestAnimationFrame(resolve)));
        for (const row of document.querySelectorAll(`#${id} [role=row].virtual-row`)) {
            const cells = Array.from(row.querySelectorAll('[role=gridcell]'), cell => cell.innerText.trim());
            rows.set(cells[0], cells);
        }
        if (top >= viewport.scrollHeight) break;
    }
    viewport.scrollTop = 0;
    return Array.from(rows.values());
}"""


def header(tab, element_id: str) -> list[str]:
    return [text.strip() for text in tab.locator(f"#{element_id} thead th").all_inner_texts()]


@pytest.fixture(scope="module")
def models(tiny_vjepa2_dir, tmp_path_factory):
    """A tiny world model with SurgVU's action spec and a task and a tool probe on it (new heads, as
    scripts/train_probe.py starts them): their folders."""
    from dataset_surgvu import action_names
    from dataset_surgvu.catalog import PROBE_TARGETS
    from load_vjepa2_pretrained import main as build
    from modeling_surgical_wm import SurgicalWorldModelForVideoClassification

    out = tmp_path_factory.mktemp("app-models")
    (out / "spec.json").write_text(json.dumps(action_names()))
    sizes = [str(item) for name, value in TINY_PREDICTOR.items() for item in (f"--{name}", value)]
    assert build(["--encoder", tiny_vjepa2_dir, "--save_path", str(out / "model"), "--action_spec",
                  str(out / "spec.json"), *sizes]) == 0
    found = {"world_model": out / "model"}
    for target in ("task", "tools"):
        entry = PROBE_TARGETS[target]
        probe = SurgicalWorldModelForVideoClassification.from_world_model(
            str(out / "model"), id2label=entry.id2label, problem_type=entry.problem_type, probe_target=target,
            probe_num_layers=1)
        probe.save_pretrained(out / f"probe_{target}")
        found[target] = out / f"probe_{target}"
    return found


@pytest.fixture(scope="module")
def mmor_root(tmp_path_factory):
    """A tiny synthetic MM-OR root: the validation take 002_PKA (24 timepoints, at least one breach span, as the maker
    places at least two breach timepoints), and a train and a test take so that the official splits build."""
    from dataset_mmor.synthetic import make_synthetic_mmor

    root = tmp_path_factory.mktemp("MM-OR_data")
    make_synthetic_mmor(root, seed=0, width=64, height=48,
                        takes={"001_PKA": ("train", 16), "002_PKA": ("validation", 24), "004_PKA": ("test", 16)})
    return root


@pytest.fixture(scope="module")
def served(models, surgvu_sample, mmor_root, tmp_path_factory):
    """The page on a free port of 127.0.0.1 with the sample's videos and MM-OR takes; its address."""
    import app

    root, _ = surgvu_sample
    args = app.parse_args(["--world_model", str(models["world_model"]), "--task_probe", str(models["task"]),
                           "--tool_probe", str(models["tools"]), "--videos", str(root), "--plan_samples", "16",
                           "--plan_iterations", "2", "--mmor_dir", str(mmor_root), "--dataset_cache_dir",
                           str(tmp_path_factory.mktemp("mmor-arrow"))])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    page = app.build_page(args)
    app.serve(page, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    page.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def save_screenshot(tab, path: Path) -> None:
    """The whole page as `path`, and under `$SURGICAL_WM_SCREENSHOT_DIR` too when it is set."""
    paths = [path]
    if os.environ.get("SURGICAL_WM_SCREENSHOT_DIR"):
        paths.append(Path(os.environ["SURGICAL_WM_SCREENSHOT_DIR"]) / path.name)
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
    for target in paths:
        tab.screenshot(path=str(target), full_page=True)
    assert path.stat().st_size > 10_000


def test_analyse_shows_the_surprise_plot_the_probe_predictions_and_the_plan(served, browser, surgvu_sample,
                                                                            models, tmp_path):
    from dataset_surgvu import TASK_CLASSES, TOOL_CLASSES, probe_video
    from dataset_surgvu.builder import sample_frame_indices

    root, manifest = surgvu_sample
    # A labelled case other than the one the page shows first, so that the choice is made in the page.
    labelled = [case for _, case in sorted(manifest["cases"].items()) if case["labeled"]]
    video = root / labelled[1]["parts"][0]["path"]
    tab = browser.new_page(viewport={"width": 1400, "height": 1000})
    requests = []
    tab.on("request", lambda request: requests.append(request.url))
    tab.goto(served)
    tab.locator("#video-choice input").fill(str(video.relative_to(root)))
    tab.keyboard.press("Enter")
    tab.click("#analyse")

    expect(tab.locator("#surprise-plot img")).to_be_visible(timeout=TIMEOUT_MS)
    expect(tab.locator("#message")).to_contain_text(video.name, timeout=TIMEOUT_MS)
    expect(tab.locator("#message")).to_contain_text("labels: ")
    # The plot is a drawn image, not an empty frame.
    size = tab.locator("#surprise-plot img").evaluate("image => [image.naturalWidth, image.naturalHeight]")
    assert min(size) > 100, size

    # One row per step of the video at the model's 4 fps, each with a task the probe can name.
    info = probe_video(video)
    num_steps = len(sample_frame_indices(info.num_frames, info.fps, 4.0))
    assert header(tab, "task-prediction")[:3] == ["step", "time (s)", "task (probe)"]
    rows = tab.evaluate(ROWS_JS, "task-prediction")
    assert sorted(int(row[0]) for row in rows) == list(range(1, num_steps + 1))
    assert all(row[2] in TASK_CLASSES for row in rows), {row[2] for row in rows}
    assert all(row[4] in TASK_CLASSES for row in rows)  # the labelled task
    tools = {name for row in rows for name in row[5].split(", ") if name}
    assert tools <= set(TOOL_CLASSES), tools

    # The rollout error per horizon: one row per horizon of a training clip (8 steps), next to the copy baseline.
    assert header(tab, "rollout-error") == ["horizon (steps)", "world model L1", "copy last context L1"]
    rollout = tab.evaluate(ROWS_JS, "rollout-error")
    assert [int(row[0]) for row in rollout] == list(range(1, 8))

    # The plan from 1 s to 2 s (4 steps at 4 fps): each step's groups, inferred and labelled side by side.
    assert header(tab, "plan-table") == ["step", "from -> to (s)", "group", "inferred", "labelled", "match"]
    plan = tab.evaluate(ROWS_JS.replace("rows.set(cells[0], cells)", "rows.set(cells[0] + cells[2], cells)"),
                        "plan-table")
    assert {row[0] for row in plan} == {"1", "2", "3", "4"}
    assert {row[2] for row in plan} == {"USM1", "USM2", "USM3", "USM4", "task"}
    assert all(row[3] and row[4] not in ("", "-") for row in plan)
    assert {row[4] for row in plan if row[2] == "task"} <= set(TASK_CLASSES) | {"none"}

    assert all(url.startswith(served) for url in requests), sorted({url for url in requests
                                                                    if not url.startswith(served)})
    save_screenshot(tab, tmp_path / "app.png")
    tab.close()


def choose_take(tab, take: str) -> None:
    tab.locator("#mmor-take input").fill(take)
    tab.keyboard.press("Enter")
    tab.click("#analyse")


def test_an_mmor_take_shows_its_surprise_and_its_breach_spans(served, browser, mmor_root, tmp_path):
    # The labelled spans, read from the take's label file: runs of consecutive timepoints with breach triplets.
    labels = json.loads((mmor_root / "take_timestamp_to_sterility_breach" / "002_PKA.json").read_text())
    breached = sorted(int(frame_id) for frame_id, triplets in labels.items() if triplets)
    runs = [[timepoint for _, timepoint in run]
            for _, run in itertools.groupby(enumerate(breached), key=lambda pair: pair[1] - pair[0])]
    spans = [(run[0], run[-1]) for run in runs]
    assert spans

    tab = browser.new_page(viewport={"width": 1400, "height": 1000})
    tab.goto(served)
    choose_take(tab, "002_PKA")
    message = tab.locator("#message")
    expect(tab.locator("#surprise-plot img")).to_be_visible(timeout=TIMEOUT_MS)
    expect(message).to_contain_text("002_PKA", timeout=TIMEOUT_MS)
    listed = ", ".join(f"{first}-{last}" for first, last in spans)
    expect(message).to_contain_text(f"breaches: {len(spans)} labelled span(s): timepoints {listed}")
    # The threshold is calibrated on the validation takes; the SurgVU sections say in one line why they are empty.
    expect(message).to_contain_text("the F1-best on the validation takes")
    expect(message).to_contain_text("not shown for an MM-OR take")
    size = tab.locator("#surprise-plot img").evaluate("image => [image.naturalWidth, image.naturalHeight]")
    assert min(size) > 100, size
    expect(tab.locator("#frames img")).to_have_count(8)

    rows = tab.evaluate(ROWS_JS, "breach-table")
    assert [(int(row[1]), int(row[2])) for row in rows] == spans
    assert [json.loads(row[3]) for row in rows] == [labels[f"{first:06d}"] for first, _ in spans]
    assert all(float(row[4]) > 0 and int(row[5]) <= last - first + 1 for row, (first, last) in zip(rows, spans))
    assert tab.evaluate(ROWS_JS, "task-prediction") == []

    save_screenshot(tab, tmp_path / "app_mmor.png")
    tab.close()


def test_a_bad_take_folder_gives_a_message_on_the_page(served, browser, tmp_path):
    from dataset_mmor.synthetic import make_synthetic_mmor

    take = tmp_path / "MM-OR_data" / "002_PKA"
    take.mkdir(parents=True)  # a take folder without its timestamp list, next to no label files
    tab = browser.new_page()
    tab.goto(served)
    choose_take(tab, str(take))
    message = tab.locator("#message")
    expect(message).to_contain_text("label file missing", timeout=TIMEOUT_MS)
    expect(message).to_contain_text(str(tmp_path / "MM-OR_data" / "take_timestamp_to_"))
    choose_take(tab, str(tmp_path / "nowhere" / "002_PKA"))
    expect(message).to_contain_text("no such MM-OR take folder", timeout=TIMEOUT_MS)
    # A take whose frame of timepoint 3 is no JPEG: the message names that file.
    manifest = make_synthetic_mmor(tmp_path / "broken", seed=1, width=64, height=48, takes={"004_PKA": ("test", 16)})
    frame = tmp_path / "broken" / "004_PKA" / "colorimage" / (
        f"camera01_colorimage-{manifest['takes']['004_PKA']['azure_frames'][3]}.jpg")
    frame.write_bytes(b"not a jpeg\n" * 10)
    choose_take(tab, str(tmp_path / "broken" / "004_PKA"))
    expect(message).to_contain_text(f"{frame}: cannot read the frame as a JPEG", timeout=TIMEOUT_MS)
    assert "Traceback" not in tab.content()
    tab.close()


def test_a_file_that_is_no_video_gives_a_message_on_the_page(served, browser, tmp_path):
    broken = tmp_path / "broken_case.mp4"
    broken.write_bytes(b"not a video\n" * 100)
    tab = browser.new_page()
    # The upload's handler exists once the page's scripts have run: a file set before that is never uploaded.
    tab.goto(served, wait_until="networkidle")
    expect(tab.locator("#analyse")).to_be_enabled(timeout=TIMEOUT_MS)
    tab.locator("#video-upload input[type=file]").set_input_files(str(broken))
    expect(tab.locator("#video-upload")).to_contain_text(broken.name, timeout=TIMEOUT_MS)
    tab.click("#analyse")
    message = tab.locator("#message")
    expect(message).to_contain_text("broken_case.mp4", timeout=TIMEOUT_MS)
    expect(message).to_contain_text("not a readable video")
    assert "Traceback" not in tab.content()
    tab.close()


def test_a_missing_probe_is_a_note_not_an_error(tmp_path):
    import app

    probes, notes = app.probes_for({"task": str(tmp_path / "probe_task"), "tools": ""}, str(tmp_path / "model"))
    assert probes == {}
    assert notes == [f"{tmp_path / 'probe_task'}: no such task probe (train one with scripts/train_probe.py "
                     "--target task)", "no tools probe given: its predictions are not shown"]
