"""The local `evaluate` metric modules in metrics/: hand-computed values, the SurgVU organisers' definition,
loading offline with `evaluate.load(<folder>)`, and clear errors on bad input."""

import ast
import os
import warnings

import numpy as np
import pytest
import yaml

from metrics.binary_detection.binary_detection import binary_detection_scores, calibrate_threshold
from metrics.surgvu_task.surgvu_task import TASK_CLASSES, surgvu_task_scores
from metrics.tool_presence.tool_presence import tool_presence_scores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = os.path.join(REPO, "metrics")
NAMES = ("surgvu_task", "tool_presence", "binary_detection")


@pytest.fixture(scope="module")
def load_metric():
    import evaluate

    assert os.environ.get("HF_HUB_OFFLINE") == "1", "conftest must keep the suite off the Hub"
    cache = {}

    def load(name):
        if name not in cache:
            cache[name] = evaluate.load(os.path.join(METRICS, name), keep_in_memory=True)
        return cache[name]

    return load


# ---------------------------------------------------------------------------------------------------------------------
# surgvu_task
# ---------------------------------------------------------------------------------------------------------------------
# Two videos, frames interleaved on purpose (grouping must follow video_ids, not order).
#   video a: references [0, 0, 1, 1], predictions [0, 1, 1, -1]  -> -1 counts as 7 (Other): [0, 1, 1, 7]
#   video b: references [7, 7, 5],    predictions [7, 5, 5]
TASK_VIDEOS = ["a", "b", "a", "b", "a", "a", "b"]
TASK_REFERENCES = [0, 7, 0, 7, 1, 1, 5]
TASK_PREDICTIONS = [0, 7, 1, 5, 1, -1, 5]


def test_task_hand_computed():
    result = surgvu_task_scores(TASK_PREDICTIONS, TASK_REFERENCES, TASK_VIDEOS)
    # video a (4 frames): class 0: support 2, TP 1, FP 0, FN 1 -> P 1, R 1/2, F1 2/3
    #                     class 1: support 2, TP 1 (frame 3), FP 1 (frame 2), FN 1 (frame 4, became 7) -> P R F1 1/2
    #                     class 7: support 0 -> weight 0 in the weighted average
    #   weighted P = (2*1 + 2*1/2)/4 = 3/4; R = (2*1/2 + 2*1/2)/4 = 1/2; F1 = (2*2/3 + 2*1/2)/4 = 7/12; acc = 2/4
    a = result["per_video"]["a"]
    assert a["precision"] == pytest.approx(3 / 4)
    assert a["recall"] == pytest.approx(1 / 2)
    assert a["f1"] == pytest.approx(7 / 12)
    assert a["accuracy"] == pytest.approx(1 / 2)
    assert (a["frames"], a["missing"]) == (4, 1)
    # video b (3 frames): class 7: support 2, TP 1, FP 0, FN 1 -> P 1, R 1/2, F1 2/3
    #                     class 5: support 1, TP 1, FP 1, FN 0 -> P 1/2, R 1, F1 2/3
    #   weighted P = (2*1 + 1*1/2)/3 = 5/6; R = (2*1/2 + 1*1)/3 = 2/3; F1 = (2*2/3 + 1*2/3)/3 = 2/3; acc = 2/3
    b = result["per_video"]["b"]
    assert b["precision"] == pytest.approx(5 / 6)
    assert b["recall"] == pytest.approx(2 / 3)
    assert b["f1"] == pytest.approx(2 / 3)
    assert b["accuracy"] == pytest.approx(2 / 3)
    assert (b["frames"], b["missing"]) == (3, 0)
    # plain mean over the two videos (not over the 7 frames)
    assert result["f1"] == pytest.approx((7 / 12 + 2 / 3) / 2)  # 0.625
    assert result["accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # 7/12; pooled over frames it would be 4/7
    assert result["precision"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert result["recall"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert (result["num_videos"], result["num_frames"], result["missing_frames"]) == (2, 7, 1)
    assert list(result["per_video"]) == ["a", "b"]


def test_task_missing_label_option():
    # Every frame unpredicted; references all 3. With missing_label=3 every frame is right, with the default 7 none.
    assert surgvu_task_scores([-1, -1], [3, 3], ["v", "v"], missing_label=3)["f1"] == pytest.approx(1.0)
    assert surgvu_task_scores([-1, -1], [3, 3], ["v", "v"])["accuracy"] == 0.0


def _organisers_scores(ground_truth, submissions):
    """The organisers' procedure, literally: left-merge each video's submission onto its ground truth on frame_nr,
    fill the holes with 7 (Other), sklearn metrics with average="weighted" per video, plain mean over videos."""
    import pandas as pd
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    per_video = {}
    for video, truth in ground_truth.items():
        submission = pd.DataFrame(submissions[video])
        merged = truth.merge(submission, on="frame_nr", how="left").fillna(7)
        y_true = merged["label"].astype(int).to_numpy()
        y_pred = merged["surgical_step"].astype(int).to_numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the organisers' default zero_division warns, and counts 0
            per_video[video] = {
                "accuracy": accuracy_score(y_true, y_pred),
                "f1": f1_score(y_true, y_pred, average="weighted"),
                "precision": precision_score(y_true, y_pred, average="weighted"),
                "recall": recall_score(y_true, y_pred, average="weighted"),
            }
    means = {key: float(np.mean([scores[key] for scores in per_video.values()])) for key in
             ("accuracy", "f1", "precision", "recall")}
    return means, per_video


def _three_video_case():
    import pandas as pd

    rng = np.random.default_rng(0)
    lengths = {"case_000_part_001": 40, "case_002_part_001": 17, "case_002_part_002": 61}
    ground_truth, submissions, covered = {}, {}, {}
    for index, (video, length) in enumerate(lengths.items()):
        frames = np.arange(length)
        # segments of a few classes, mostly Other
        labels = np.where(rng.random(length) < 0.6, 7, rng.choice([0, 3, 5], size=length))
        ground_truth[video] = pd.DataFrame({"frame_nr": frames, "label": labels})
        # a noisy model: right 70% of the time
        predicted = np.where(rng.random(length) < 0.7, labels, rng.integers(0, 8, size=length))
        keep = rng.random(length) < 0.75  # the submission leaves out about a quarter of the frames ...
        keep[5:9] = False  # ... always including a run of four
        if index == 2:
            keep[-10:] = False  # and the whole end of the last video
        submissions[video] = [{"frame_nr": int(f), "surgical_step": int(s)} for f, s in zip(frames[keep],
                                                                                            predicted[keep])]
        if index == 1:  # predictions for frames beyond the ground truth are ignored by the left merge
            submissions[video].append({"frame_nr": length + 3, "surgical_step": 2})
        covered[video] = dict(zip(frames[keep].tolist(), predicted[keep].tolist()))
    return ground_truth, submissions, covered


def _task_inputs(ground_truth, covered):
    predictions, references, video_ids = [], [], []
    for video, truth in ground_truth.items():
        for frame, label in zip(truth["frame_nr"], truth["label"]):
            predictions.append(covered[video].get(int(frame), -1))
            references.append(int(label))
            video_ids.append(video)
    return predictions, references, video_ids


def test_task_equals_organisers_definition(load_metric):
    ground_truth, submissions, covered = _three_video_case()
    expected, expected_per_video = _organisers_scores(ground_truth, submissions)
    predictions, references, video_ids = _task_inputs(ground_truth, covered)
    missing = sum(p == -1 for p in predictions)
    assert missing >= 12  # the case does exercise missing frames

    for result in (surgvu_task_scores(predictions, references, video_ids),
                   load_metric("surgvu_task").compute(predictions=predictions, references=references,
                                                      video_ids=video_ids)):
        for key in ("accuracy", "f1", "precision", "recall"):
            assert result[key] == pytest.approx(expected[key], abs=1e-12), key
            for video in ground_truth:
                assert result["per_video"][video][key] == pytest.approx(expected_per_video[video][key], abs=1e-12)
        assert result["num_videos"] == 3
        assert result["num_frames"] == 40 + 17 + 61
        assert result["missing_frames"] == missing

    # The case tells the definitions apart: pooling all frames, or dropping the missing frames, gives other values.
    pooled = surgvu_task_scores(predictions, references, ["all"] * len(references))
    assert abs(pooled["f1"] - expected["f1"]) > 1e-3
    kept = [i for i, p in enumerate(predictions) if p != -1]
    dropped = surgvu_task_scores([predictions[i] for i in kept], [references[i] for i in kept],
                                 [video_ids[i] for i in kept])
    assert abs(dropped["f1"] - expected["f1"]) > 1e-3


def test_task_errors(load_metric):
    with pytest.raises(ValueError, match="video_ids is required"):
        surgvu_task_scores([0, 1], [0, 1], None)
    with pytest.raises(ValueError, match="video_ids is required"):
        load_metric("surgvu_task").compute(predictions=[0, 1], references=[0, 1])
    with pytest.raises(ValueError, match="3 video ids for 2 frames"):
        surgvu_task_scores([0, 1], [0, 1], ["a", "a", "b"])
    with pytest.raises(ValueError, match="reference label 8 is out of range 0..7"):
        surgvu_task_scores([0, 1], [0, 8], ["a", "a"])
    with pytest.raises(ValueError, match="reference label 8 is out of range"):
        load_metric("surgvu_task").compute(predictions=[0, 1], references=[0, 8], video_ids=["a", "a"])
    with pytest.raises(ValueError, match="predicted label -2 is out of range"):
        surgvu_task_scores([-2, 1], [0, 1], ["a", "a"])
    with pytest.raises(ValueError, match="predicted label 9 is out of range"):
        surgvu_task_scores([9, 1], [0, 1], ["a", "a"])
    with pytest.raises(ValueError, match="reference label 5 is out of range 0..4"):
        surgvu_task_scores([0, 1], [0, 5], ["a", "a"], num_classes=5, missing_label=4)
    with pytest.raises(ValueError, match="same length"):
        surgvu_task_scores([0, 1, 2], [0, 1], ["a", "a"])


def test_task_module_batches_and_kwargs(load_metric):
    metric = load_metric("surgvu_task")
    assert metric.name == "surgvu_task"
    expected = surgvu_task_scores(TASK_PREDICTIONS, TASK_REFERENCES, TASK_VIDEOS)
    metric.add_batch(predictions=TASK_PREDICTIONS[:3], references=TASK_REFERENCES[:3])
    metric.add_batch(predictions=TASK_PREDICTIONS[3:], references=TASK_REFERENCES[3:])
    assert metric.compute(video_ids=TASK_VIDEOS) == expected
    assert expected["f1"] == pytest.approx(0.625)


# ---------------------------------------------------------------------------------------------------------------------
# tool_presence
# ---------------------------------------------------------------------------------------------------------------------
# 4 examples x 3 classes; class 2 has no positive reference.
TOOL_SCORES = [[0.9, 0.2, 0.1],
               [0.6, 0.7, 0.3],
               [0.4, 0.8, 0.2],
               [0.1, 0.3, 0.4]]
TOOL_REFERENCES = [[1, 0, 0],
                   [0, 1, 0],
                   [1, 1, 0],
                   [0, 0, 0]]


def test_tool_presence_hand_computed():
    result = tool_presence_scores(TOOL_SCORES, TOOL_REFERENCES)
    # class 0: ranked 0.9 (+), 0.6 (-), 0.4 (+), 0.1 (-): precision 1 at recall 1/2, 2/3 at recall 1
    #          AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    #          at 0.5: predicted examples 0, 1 -> TP 1 (ex 0), FP 1 (ex 1), FN 1 (ex 2) -> F1 = 2*1/(2*1+1+1) = 1/2
    # class 1: ranked 0.8 (+), 0.7 (+), 0.3 (-), 0.2 (-): AP = 1
    #          at 0.5: predicted examples 1, 2 -> TP 2, FP 0, FN 0 -> F1 = 1
    # class 2: no positive -> left out (None)
    assert result["average_precision"] == {0: pytest.approx(5 / 6), 1: pytest.approx(1.0), 2: None}
    assert result["per_class_f1"] == {0: pytest.approx(1 / 2), 1: pytest.approx(1.0), 2: None}
    assert result["mAP"] == pytest.approx((5 / 6 + 1) / 2)  # 11/12
    assert result["f1"] == pytest.approx((1 / 2 + 1) / 2)  # 3/4
    assert result["classes_evaluated"] == 2


def test_tool_presence_threshold_and_names():
    names = ["needle driver", "cadiere forceps", "stapler"]
    result = tool_presence_scores(TOOL_SCORES, TOOL_REFERENCES, threshold=0.35, class_names=names)
    # class 0 at 0.35: predicted examples 0, 1, 2 -> TP 2, FP 1, FN 0 -> F1 = 4/5
    # class 1 at 0.35: predicted examples 1, 2 (0.3 < 0.35) -> TP 2 -> F1 = 1
    # class 2 at 0.35: example 3 (0.4) predicted, but the class has no positive: not evaluated. Counting it (F1 0)
    #   would give (4/5 + 1 + 0)/3 = 0.6 instead of 0.9.
    assert result["per_class_f1"] == {"needle driver": pytest.approx(4 / 5), "cadiere forceps": pytest.approx(1.0),
                                      "stapler": None}
    assert result["f1"] == pytest.approx(0.9)
    assert result["mAP"] == pytest.approx(11 / 12)  # AP does not depend on the threshold
    # a score equal to the threshold counts as present: class 0 at 0.4 -> examples 0, 1, 2 -> F1 4/5 again
    assert tool_presence_scores(TOOL_SCORES, TOOL_REFERENCES, threshold=0.4)["per_class_f1"][0] == pytest.approx(0.8)


def test_tool_presence_no_positives():
    result = tool_presence_scores([[0.2, 0.9], [0.8, 0.1]], [[0, 0], [0, 0]])
    assert result == {"mAP": None, "f1": None, "average_precision": {0: None, 1: None},
                      "per_class_f1": {0: None, 1: None}, "classes_evaluated": 0}


def test_tool_presence_errors(load_metric):
    with pytest.raises(ValueError, match="ragged"):
        tool_presence_scores([[0.9, 0.2], [0.6]], [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="ragged"):
        tool_presence_scores([[0.9, 0.2], [0.6, 0.1]], [[1, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match="ragged"):
        load_metric("tool_presence").compute(predictions=[[0.9, 0.2], [0.6]], references=[[1, 0], [0, 1]])
    with pytest.raises(ValueError, match=r"same shape.*\(2, 2\) and \(2, 3\)"):
        tool_presence_scores([[0.9, 0.2], [0.6, 0.1]], [[1, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match="same shape"):
        load_metric("tool_presence").compute(predictions=[[0.9, 0.2], [0.6, 0.1]], references=[[1, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match="same shape"):
        tool_presence_scores([[0.9, 0.2]], [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="must be 0 or 1, got 2"):
        tool_presence_scores([[0.9, 0.2]], [[2, 0]])
    with pytest.raises(ValueError, match="class_names has 1 names for 2 classes"):
        tool_presence_scores([[0.9, 0.2]], [[1, 0]], class_names=["stapler"])
    with pytest.raises(ValueError, match="NaN"):
        tool_presence_scores([[float("nan"), 0.2]], [[1, 0]])


# ---------------------------------------------------------------------------------------------------------------------
# binary_detection
# ---------------------------------------------------------------------------------------------------------------------
BINARY_SCORES = [0.1, 0.4, 0.35, 0.8]
BINARY_REFERENCES = [0, 0, 1, 1]


def test_binary_detection_hand_computed():
    result = binary_detection_scores(BINARY_SCORES, BINARY_REFERENCES, threshold=0.5)
    # at 0.5 only 0.8 is positive: TP 1, FP 0, FN 1 (0.35) -> P 1, R 1/2, F1 2/3
    assert result["precision"] == pytest.approx(1.0)
    assert result["recall"] == pytest.approx(0.5)
    assert result["f1"] == pytest.approx(2 / 3)
    # AUROC: (positive, negative) pairs ranked right: (0.35, 0.1) yes, (0.35, 0.4) no, (0.8, 0.1) yes, (0.8, 0.4) yes
    #        -> 3/4
    assert result["auroc"] == pytest.approx(0.75)
    # AUPRC: ranked 0.8 (+) P 1 at R 1/2; 0.4 (-); 0.35 (+) P 2/3 at R 1 -> 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert result["auprc"] == pytest.approx(5 / 6)
    assert result["threshold"] == 0.5
    assert (result["positives"], result["support"], result["predicted_positives"]) == (2, 4, 1)


def test_binary_detection_ties_hand_computed():
    # scores with a tie between a positive and a negative (0.5, 0.5)
    result = binary_detection_scores([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1], threshold=0.5)
    # AUROC pairs: (0.5+, 0.5-) tie = 1/2, (0.5+, 0.2) 1, (0.9, 0.5-) 1, (0.9, 0.2) 1 -> 3.5/4 = 0.875
    assert result["auroc"] == pytest.approx(0.875)
    # AUPRC: at 0.9: TP 1, FP 0 -> P 1, R 1/2; at 0.5: TP 2, FP 1 -> P 2/3, R 1 -> 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert result["auprc"] == pytest.approx(5 / 6)
    # at 0.5 (>=): TP 2, FP 1 (the tied negative), FN 0 -> P 2/3, R 1, F1 = 4/5
    assert (result["precision"], result["recall"], result["f1"]) == (pytest.approx(2 / 3), 1.0, pytest.approx(0.8))


def test_binary_detection_calibrated_hand_computed():
    result = binary_detection_scores(BINARY_SCORES, BINARY_REFERENCES)
    # candidate thresholds (the distinct scores): 0.8: TP 1 FP 0 FN 1 -> F1 2/3;  0.4: TP 1 FP 1 FN 1 -> 1/2;
    #   0.35: TP 2 FP 1 FN 0 -> 4/5;  0.1: TP 2 FP 2 FN 0 -> 2/3.  Best: 0.35.
    assert result["threshold"] == pytest.approx(0.35)
    assert result["f1"] == pytest.approx(0.8)
    assert (result["precision"], result["recall"]) == (pytest.approx(2 / 3), 1.0)
    # passing the calibrated threshold back gives the same numbers (what one does on a test set)
    assert binary_detection_scores(BINARY_SCORES, BINARY_REFERENCES, threshold=result["threshold"]) == result

    # A tie: scores [0.9 (+), 0.5 (-), 0.4 (-), 0.3 (+)]
    #   0.9: TP 1 FP 0 FN 1 -> F1 2/3;  0.5: TP 1 FP 1 FN 1 -> 1/2;  0.4: TP 1 FP 2 FN 1 -> 2/5;
    #   0.3: TP 2 FP 2 FN 0 -> 4/6 = 2/3.  Best 2/3 at 0.9 and 0.3: the highest threshold (fewer alarms) wins.
    tie = binary_detection_scores([0.9, 0.5, 0.4, 0.3], [1, 0, 0, 1])
    assert tie["threshold"] == 0.9
    assert (tie["f1"], tie["precision"], tie["recall"]) == (pytest.approx(2 / 3), 1.0, 0.5)


def _brute_force_f1(scores, labels):
    """F1 of the positive class at every distinct score used as threshold (positive when score >= t)."""
    table = {}
    for t in np.unique(scores):
        predicted = scores >= t
        tp = int(np.sum(predicted & (labels == 1)))
        fp = int(np.sum(predicted & (labels == 0)))
        fn = int(np.sum(~predicted & (labels == 1)))
        table[float(t)] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return table


@pytest.mark.parametrize("seed", range(5))
def test_binary_detection_calibration_maximises_f1(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(120) < 0.12).astype(int)
    labels[:2] = 1  # at least two positives
    # informative but overlapping scores, rounded so that ties occur
    scores = np.round(np.clip(rng.normal(0.3 + 0.3 * labels, 0.15), 0, 1), 2)
    table = _brute_force_f1(scores, labels)
    best = max(table.values())
    result = binary_detection_scores(scores, labels)
    assert result["f1"] == pytest.approx(best, abs=1e-12)
    assert table[result["threshold"]] == pytest.approx(best, abs=1e-12)
    # ties go to the highest threshold reaching the best F1
    assert result["threshold"] == max(t for t, f1 in table.items() if f1 >= best - 1e-12)
    assert calibrate_threshold(scores, labels) == result["threshold"]
    # no other threshold does better, not even between the scores
    for t in np.linspace(0, 1, 21):
        assert binary_detection_scores(scores, labels, threshold=t)["f1"] <= best + 1e-12


def test_binary_detection_one_class():
    negatives = binary_detection_scores([0.2, 0.7, 0.4], [0, 0, 0], threshold=0.5)
    # no positive: AUROC and AUPRC undefined; one false alarm (0.7): TP 0, FP 1 -> P 0, R 0 (0/0 -> 0), F1 0
    assert negatives["auroc"] is None and negatives["auprc"] is None
    assert (negatives["precision"], negatives["recall"], negatives["f1"]) == (0.0, 0.0, 0.0)
    assert (negatives["positives"], negatives["support"], negatives["predicted_positives"]) == (0, 3, 1)
    positives = binary_detection_scores([0.2, 0.7, 0.4], [1, 1, 1], threshold=0.5)
    # no negative: AUROC undefined; every prefix of the ranking has precision 1 -> AUPRC 1
    # at 0.5: TP 1 (0.7), FN 2 -> P 1, R 1/3, F1 = 2/(2+2) = 1/2
    assert positives["auroc"] is None
    assert positives["auprc"] == pytest.approx(1.0)
    assert (positives["precision"], positives["recall"], positives["f1"]) == (1.0, pytest.approx(1 / 3), 0.5)
    with pytest.raises(ValueError, match="without positive references"):
        binary_detection_scores([0.2, 0.7], [0, 0])


def test_binary_detection_errors(load_metric):
    with pytest.raises(ValueError, match="same length"):
        binary_detection_scores([0.2, 0.7], [0, 1, 1])
    with pytest.raises(ValueError, match="must be 0 or 1, got 2"):
        binary_detection_scores([0.2, 0.7], [0, 2])
    with pytest.raises(ValueError, match="must be 0 or 1, got 2"):
        load_metric("binary_detection").compute(predictions=[0.2, 0.7], references=[0, 2], threshold=0.5)
    with pytest.raises(ValueError, match="NaN"):
        binary_detection_scores([float("nan"), 0.7], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        binary_detection_scores([], [])


# ---------------------------------------------------------------------------------------------------------------------
# the evaluate modules: offline loading, same results as the plain functions
# ---------------------------------------------------------------------------------------------------------------------
def test_modules_match_plain_functions(load_metric):
    ground_truth, _, covered = _three_video_case()
    predictions, references, video_ids = _task_inputs(ground_truth, covered)
    task = load_metric("surgvu_task")
    assert task.compute(predictions=predictions, references=references, video_ids=video_ids, missing_label=0) == \
        surgvu_task_scores(predictions, references, video_ids, missing_label=0)

    tools = load_metric("tool_presence")
    assert tools.name == "tool_presence"
    rng = np.random.default_rng(3)
    scores = rng.random((30, 12)).astype(np.float32)  # float32: what the module's features store
    labels = (rng.random((30, 12)) < 0.3).astype(int)
    labels[:, 11] = 0  # one class without positives
    names = [f"tool {i}" for i in range(12)]
    expected = tool_presence_scores(scores, labels, threshold=0.4, class_names=names)
    got = tools.compute(predictions=scores.tolist(), references=labels.tolist(), threshold=0.4, class_names=names)
    assert got == expected
    assert got["classes_evaluated"] == 11 and got["average_precision"]["tool 11"] is None

    binary = load_metric("binary_detection")
    assert binary.name == "binary_detection"
    scores = rng.random(50).astype(np.float32)
    labels = (rng.random(50) < scores).astype(int)
    for threshold in (None, 0.5):
        expected = binary_detection_scores(scores, labels, threshold=threshold)
        assert binary.compute(predictions=scores.tolist(), references=labels.tolist(), threshold=threshold) == expected


def test_module_loads_from_script_path(load_metric):
    import evaluate

    metric = evaluate.load(os.path.join(METRICS, "binary_detection", "binary_detection.py"), keep_in_memory=True)
    result = metric.compute(predictions=BINARY_SCORES, references=BINARY_REFERENCES, threshold=0.5)
    assert result["auroc"] == pytest.approx(0.75) and result["f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("name", NAMES)
def test_space_files(name):
    folder = os.path.join(METRICS, name)
    with open(os.path.join(folder, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["sdk"] == "gradio" and header["app_file"] == "app.py" and header["pinned"] is False
    assert header["tags"] == ["evaluate", "metric"]
    for key in ("title", "emoji", "colorFrom", "colorTo", "sdk_version", "description"):
        assert header[key], key
    with open(os.path.join(folder, "requirements.txt"), encoding="utf-8") as f:
        requirements = f.read()
    assert "evaluate" in requirements and "scikit-learn" in requirements
    with open(os.path.join(folder, "app.py"), encoding="utf-8") as f:
        app = f.read()
    ast.parse(app)
    assert "launch_gradio_widget(module)" in app and f'"{name}.py"' in app
    if name == "surgvu_task":
        assert all(task_class in text for task_class in TASK_CLASSES)
