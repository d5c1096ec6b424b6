# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Multi-label tool presence: mAP and class-averaged F1 (the SurgToolLoc 2022 metric)."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import average_precision_score, f1_score


# The 12 SurgVU / SurgToolLoc tool classes, in the order dataset_surgvu uses.
TOOL_CLASSES = (
    "needle driver",
    "cadiere forceps",
    "prograsp forceps",
    "monopolar curved scissors",
    "bipolar forceps",
    "stapler",
    "force bipolar",
    "vessel sealer",
    "permanent cautery hook/spatula",
    "clip applier",
    "tip-up fenestrated grasper",
    "grasping retractor",
)

_CITATION = """\
@article{zia2023surgtoolloc,
  title={Surgical tool classification and localization: results and methods from the MICCAI 2022 SurgToolLoc
         challenge},
  author={Zia, Aneeq and Bhattacharyya, Kiran and Liu, Xi and Berniker, Max and Wang, Ziheng and Nespolo, Rogerio
          and others},
  journal={arXiv preprint arXiv:2305.07152},
  year={2023}
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
Multi-label tool presence (SurgToolLoc 2022, SurgVU: 12 tool classes). Each example is one frame or clip with a
score (probability) per class and a 0/1 reference per class.

- mAP: scikit-learn's average_precision_score of every class that has at least one positive reference, averaged
  over those classes with equal weight.
- f1: SurgToolLoc's metric, F1 averaged over classes: scikit-learn's f1_score(average="macro", zero_division=0)
  over the classes that have at least one positive reference, a class counting as predicted present when its
  score >= threshold (0.5 by default). Classes without any positive reference are left out of both averages
  (their F1 could only be 0 or undefined) and reported as None.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): per example, one score per class (higher = more likely present).
    references (`list` of `list` of `int`): per example, 0 or 1 per class; same shape as predictions.
    threshold (`float`, defaults to 0.5): a class is predicted present when its score >= threshold (for F1).
    class_names (`list` of `str`, optional): one name per class, used as keys of the per-class outputs
        (default: the class indices 0..C-1).
Returns:
    mAP (`float` or None): mean average precision over the classes with at least one positive reference.
    f1 (`float` or None): macro F1 over the same classes.
    average_precision (`dict`): class -> average precision, None for a class without positive references.
    per_class_f1 (`dict`): class -> F1 at the threshold, None for a class without positive references.
    classes_evaluated (`int`): number of classes with at least one positive reference.
Examples:
    >>> metric = evaluate.load("metrics/tool_presence")
    >>> results = metric.compute(predictions=[[0.9, 0.2], [0.6, 0.7], [0.4, 0.8], [0.1, 0.3]],
    ...                          references=[[1, 0], [0, 1], [1, 1], [0, 0]])
    >>> round(results["mAP"], 4), results["f1"]
    (0.9167, 0.75)
"""


def _as_matrix(rows, name, dtype):
    try:
        lengths = {len(row) for row in rows}
    except TypeError:
        raise ValueError(f"{name} must be a list of per-class lists (one row per example)") from None
    if len(rows) == 0:
        raise ValueError(f"{name} is empty: nothing to evaluate")
    if len(lengths) != 1:
        raise ValueError(f"{name} rows have different numbers of classes: {sorted(lengths)} (ragged rows)")
    (num_classes,) = lengths
    if num_classes == 0:
        raise ValueError(f"{name} rows are empty: need at least one class")
    try:
        return np.asarray([list(row) for row in rows], dtype=dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must hold numbers: {error}") from None


def tool_presence_scores(predictions, references, threshold=0.5, class_names=None):
    """mAP and class-averaged F1 of multi-label presence scores (see the module description)."""
    scores = _as_matrix(predictions, "predictions", np.float64)
    labels = _as_matrix(references, "references", np.float64)
    if scores.shape != labels.shape:
        raise ValueError(
            f"predictions and references must have the same shape (examples, classes): got {scores.shape} and "
            f"{labels.shape}"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("predictions hold NaN or infinite scores")
    if not np.all((labels == 0) | (labels == 1)):
        bad = labels[(labels != 0) & (labels != 1)][0]
        raise ValueError(f"references must be 0 or 1, got {bad:g}")
    labels = labels.astype(np.int64)
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    num_classes = scores.shape[1]
    if class_names is None:
        keys = list(range(num_classes))
    else:
        keys = list(class_names)
        if len(keys) != num_classes:
            raise ValueError(f"class_names has {len(keys)} names for {num_classes} classes")
        if len(set(keys)) != len(keys):
            raise ValueError("class_names must be distinct")

    predicted = (scores >= threshold).astype(np.int64)
    evaluated = np.flatnonzero(labels.sum(axis=0) > 0)
    average_precision = {key: None for key in keys}
    per_class_f1 = {key: None for key in keys}
    for index in evaluated:
        key = keys[index]
        average_precision[key] = float(average_precision_score(labels[:, index], scores[:, index]))
        per_class_f1[key] = float(f1_score(labels[:, index], predicted[:, index], zero_division=0))
    if len(evaluated):
        mean_ap = float(np.mean([average_precision[keys[index]] for index in evaluated]))
        macro_f1 = float(f1_score(labels[:, evaluated], predicted[:, evaluated], average="macro", zero_division=0))
    else:
        mean_ap = macro_f1 = None
    return {
        "mAP": mean_ap,
        "f1": macro_f1,
        "average_precision": average_precision,
        "per_class_f1": per_class_f1,
        "classes_evaluated": int(len(evaluated)),
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ToolPresence(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                }
            ),
            homepage="https://surgtoolloc.grand-challenge.org/",
            reference_urls=[
                "https://arxiv.org/abs/2305.07152",
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.average_precision_score.html",
            ],
        )

    def _compute(self, predictions, references, threshold=0.5, class_names=None):
        return tool_presence_scores(predictions, references, threshold=threshold, class_names=class_names)
