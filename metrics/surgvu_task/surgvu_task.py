# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""SurgVU 2024 category 2 task recognition: the organisers' per-video weighted F1, averaged over videos."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score


TASK_CLASSES = (
    "Range of motion",
    "Rectal artery/vein",
    "Retraction and collision avoidance",
    "Skills application",
    "Suspensory ligaments",
    "Suturing",
    "Uterine horn",
    "Other",
)
NO_PREDICTION = -1

_CITATION = """\
@article{zia2025surgvu,
  title={Surgical Visual Understanding (SurgVU) Dataset},
  author={Zia, Aneeq and Berniker, Max and Nespolo, Rogerio and Perreault, Conor and Wang, Ziheng and
          Mueller, Benjamin and Schmidt, Ryan and Bhattacharyya, Kiran and Liu, Xi and Jarc, Anthony},
  journal={arXiv preprint arXiv:2501.09209},
  year={2025}
}
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O. and
          Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
          Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""

_DESCRIPTION = """\
Surgical task (step) recognition as scored in the SurgVU 2024 challenge, category 2. The organisers merge a
video's predictions with its ground truth on the frame number; ground-truth frames without a prediction count as
class 7 (Other). For every video they compute scikit-learn's accuracy and F1, precision and recall with
average="weighted" (each class weighted by its number of ground-truth frames in that video), then take the plain
mean of each score over videos: every video counts the same, however long it is.

Classes, in the organisers' order: 0 Range of motion, 1 Rectal artery/vein, 2 Retraction and collision
avoidance, 3 Skills application, 4 Suspensory ligaments, 5 Suturing, 6 Uterine horn, 7 Other.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class of each ground-truth frame, 0..num_classes-1; -1 means the
        submission has no prediction for this frame (it then counts as `missing_label`, Other).
    references (`list` of `int`): ground-truth class of each frame, 0..num_classes-1.
    video_ids (`list` of `str`): the video of each frame, one per example (required). Scores are computed per
        video and averaged over videos. The frames of a video need not be contiguous.
    missing_label (`int`, defaults to 7): the class that frames without a prediction count as.
    num_classes (`int`, defaults to 8): labels must lie in 0..num_classes-1.
Returns:
    f1 (`float`): mean over videos of the weighted F1.
    accuracy (`float`): mean over videos of the accuracy.
    precision (`float`): mean over videos of the weighted precision (zero_division=0).
    recall (`float`): mean over videos of the weighted recall.
    num_videos (`int`), num_frames (`int`), missing_frames (`int`): counts; missing frames are those with -1.
    per_video (`dict`): video id (as `str`) -> {"f1", "accuracy", "precision", "recall", "frames", "missing"}.
Examples:
    >>> metric = evaluate.load("metrics/surgvu_task")
    >>> results = metric.compute(predictions=[0, 1, 1, -1, 7, 5, 5], references=[0, 0, 1, 1, 7, 7, 5],
    ...                          video_ids=["a", "a", "a", "a", "b", "b", "b"])
    >>> round(results["f1"], 4)
    0.625
"""


def _as_labels(values, name):
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat list of class indices, got an array of shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        try:
            as_float = array.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}") from None
        bad = as_float[~np.isfinite(as_float) | (as_float != np.round(as_float))]
        if bad.size:
            raise ValueError(f"{name} must hold integer class indices, got {bad[0]:g}")
        array = as_float
    return array.astype(np.int64)


def surgvu_task_scores(predictions, references, video_ids, missing_label=7, num_classes=8):
    """The SurgVU 2024 category 2 task-recognition scores (see the module description).

    `predictions`, `references` and `video_ids` are parallel sequences, one entry per ground-truth frame;
    a prediction of -1 means "no prediction for this frame" and counts as `missing_label`.
    """
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    missing_label = int(missing_label)
    if not 0 <= missing_label < num_classes:
        raise ValueError(f"missing_label must lie in 0..{num_classes - 1}, got {missing_label}")
    predictions = _as_labels(predictions, "predictions")
    references = _as_labels(references, "references")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must have the same length, got {len(predictions)} and {len(references)}"
        )
    if len(references) == 0:
        raise ValueError("no frames to evaluate: predictions and references are empty")
    if video_ids is None:
        raise ValueError(
            "video_ids is required: one video id per frame (the organisers score every video separately and "
            "average over videos)"
        )
    if isinstance(video_ids, str):
        raise ValueError("video_ids must be a list with one video id per frame, not a single string")
    video_ids = [str(video_id) for video_id in video_ids]
    if len(video_ids) != len(references):
        raise ValueError(
            f"video_ids must have one entry per frame: got {len(video_ids)} video ids for {len(references)} frames"
        )
    out_of_range = references[(references < 0) | (references >= num_classes)]
    if out_of_range.size:
        raise ValueError(f"reference label {int(out_of_range[0])} is out of range 0..{num_classes - 1}")
    out_of_range = predictions[(predictions < NO_PREDICTION) | (predictions >= num_classes)]
    if out_of_range.size:
        raise ValueError(
            f"predicted label {int(out_of_range[0])} is out of range 0..{num_classes - 1} "
            f"(or {NO_PREDICTION} for no prediction)"
        )

    missing = predictions == NO_PREDICTION
    filled = np.where(missing, missing_label, predictions)
    groups = {}
    for index, video_id in enumerate(video_ids):
        groups.setdefault(video_id, []).append(index)

    per_video = {}
    for video_id, indices in groups.items():
        y_true, y_pred = references[indices], filled[indices]
        per_video[video_id] = {
            "f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "precision": float(precision_score(y_true, y_pred, average="weighted", zero_division=0)),
            "recall": float(recall_score(y_true, y_pred, average="weighted", zero_division=0)),
            "frames": len(indices),
            "missing": int(missing[indices].sum()),
        }

    def mean(key):
        return float(np.mean([scores[key] for scores in per_video.values()]))

    return {
        "f1": mean("f1"),
        "accuracy": mean("accuracy"),
        "precision": mean("precision"),
        "recall": mean("recall"),
        "num_videos": len(per_video),
        "num_frames": int(len(references)),
        "missing_frames": int(missing.sum()),
        "per_video": per_video,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SurgvuTask(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
            homepage="https://surgvu24.grand-challenge.org/",
            reference_urls=[
                "https://arxiv.org/abs/2501.09209",
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html",
            ],
        )

    def _compute(self, predictions, references, video_ids=None, missing_label=7, num_classes=8):
        return surgvu_task_scores(
            predictions, references, video_ids, missing_label=missing_label, num_classes=num_classes
        )
