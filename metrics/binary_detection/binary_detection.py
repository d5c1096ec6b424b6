# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Binary detection of a rare positive class: precision, recall and F1 at a threshold, AUROC and AUPRC."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)


_CITATION = """\
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
Detection of a rare positive class from a score (higher = more likely positive), e.g. sterility breaches or
surprise-score detectors. Threshold-free: AUROC (roc_auc_score) and AUPRC (average_precision_score). At a
threshold (an example is predicted positive when score >= threshold): precision, recall and F1 of the positive
class (zero_division=0).

Without a threshold, the one that maximises the positive class's F1 on these data is chosen among the distinct
scores (from precision_recall_curve; on ties the highest such threshold). That is how a threshold is calibrated
on a validation set; pass it explicitly on the test set, or the test F1 is optimistically biased.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): one score per example, higher = more likely positive.
    references (`list` of `int`): 0 or 1 per example (1 = positive).
    threshold (`float`, optional): predicted positive when score >= threshold. Default None: the threshold that
        maximises F1 on these data (needs at least one positive reference).
Returns:
    precision, recall, f1 (`float`): of the positive class at the threshold (zero_division=0).
    auroc (`float` or None): area under the ROC curve; None when references hold only one class.
    auprc (`float` or None): average precision; None when references hold no positive.
    threshold (`float`): the threshold used.
    positives (`int`): number of positive references; support (`int`): number of examples.
    predicted_positives (`int`): number of examples predicted positive at the threshold.
Examples:
    >>> metric = evaluate.load("metrics/binary_detection")
    >>> results = metric.compute(predictions=[0.1, 0.4, 0.35, 0.8], references=[0, 0, 1, 1], threshold=0.5)
    >>> results["precision"], results["recall"], results["auroc"]
    (1.0, 0.5, 0.75)
"""


def calibrate_threshold(scores, labels):
    """The threshold (one of the scores) maximising the positive class's F1; ties go to the highest threshold."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The last (precision, recall) pair is (1, 0) and has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return float(thresholds[best].max())


def binary_detection_scores(predictions, references, threshold=None):
    """Scores of a binary detector (see the module description)."""
    scores = np.asarray(predictions, dtype=np.float64)
    labels = np.asarray(references, dtype=np.float64)
    if scores.ndim != 1 or labels.ndim != 1:
        raise ValueError(
            f"predictions and references must be flat lists, got shapes {scores.shape} and {labels.shape}"
        )
    if len(scores) != len(labels):
        raise ValueError(
            f"predictions and references must have the same length, got {len(scores)} and {len(labels)}"
        )
    if len(labels) == 0:
        raise ValueError("no examples to evaluate: predictions and references are empty")
    if not np.all(np.isfinite(scores)):
        raise ValueError("predictions hold NaN or infinite scores")
    if not np.all((labels == 0) | (labels == 1)):
        bad = labels[(labels != 0) & (labels != 1)][0]
        raise ValueError(f"references must be 0 or 1, got {bad:g}")
    labels = labels.astype(np.int64)
    positives = int(labels.sum())
    if threshold is None:
        if positives == 0:
            raise ValueError(
                "cannot calibrate a threshold without positive references; pass threshold= explicitly"
            )
        threshold = calibrate_threshold(scores, labels)
    else:
        threshold = float(threshold)
        if np.isnan(threshold):
            raise ValueError("threshold is NaN")
    predicted = (scores >= threshold).astype(np.int64)
    both_classes = 0 < positives < len(labels)
    return {
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "recall": float(recall_score(labels, predicted, zero_division=0)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "auroc": float(roc_auc_score(labels, scores)) if both_classes else None,
        "auprc": float(average_precision_score(labels, scores)) if positives else None,
        "threshold": threshold,
        "positives": positives,
        "support": int(len(labels)),
        "predicted_positives": int(predicted.sum()),
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BinaryDetection(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float32"), "references": datasets.Value("int32")}
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.precision_recall_curve.html",
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.roc_auc_score.html",
            ],
        )

    def _compute(self, predictions, references, threshold=None):
        return binary_detection_scores(predictions, references, threshold=threshold)
