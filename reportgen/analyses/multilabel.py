"""Multi-label models: per-label precision, recall, F1 and average precision, the
aggregates a multi-label review quotes, label cardinality and co-occurrence, and labels
the neighbours and the model say are missing or extra.

Conventions (each checked against scikit-learn in ``tests/test_multilabel.py``):

- A label is **predicted** when its probability is at least its threshold.
- Per-label precision of a label never predicted, and recall of a label no image
  carries, are 0 (scikit-learn's ``zero_division=0``); the macro F1 averages the labels
  that some image carries.
- **Average precision** is scikit-learn's ``average_precision_score``: the sum over
  distinct score thresholds, highest first, of the recall gained times the precision
  there (no interpolation; tied scores enter together).  A label no image carries has
  none (None), and the **mAP** averages the labels that have one.  The micro AP pools
  every (image, label) pair.
- **Samples F1** averages each image's F1 between its true and predicted label sets;
  an image with no label that gets none scores 1 (``zero_division=1``: nothing to find,
  nothing wrongly found).  **Subset accuracy** is the share of images whose predicted
  set equals the true set; the **Hamming loss** the share of (image, label) decisions
  that are wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

# A label is suspected missing when the model says it is there (p >= threshold) and at
# least this share of the image's neighbours carry it; extra when the model says it is
# not and at most ``1 - MISSING_SHARE`` of them do.  Both sources must agree, as for
# single-label mislabels: either alone flags too many hard-but-right images.
MISSING_SHARE = 0.5
EXTRA_SHARE = 0.1
MAX_LABEL_SUSPECTS = 200  # listed in the JSON; the page shows the first ones


@dataclass
class LabelScores:
    """One label's figures at its threshold, over the images whose labels are known."""

    name: str
    threshold: float
    support: int  # images carrying the label
    predicted: int  # images given the label (p >= threshold)
    precision: float
    recall: float
    f1: float
    average_precision: float | None  # None: no image carries the label
    best_f1: float | None  # the best F1 over thresholds, fitted on these images
    best_threshold: float | None  # where it is reached (optimistic: chosen on the data it scores)


@dataclass
class MultiLabelMetrics:
    """Everything computed from the true label sets and the probabilities."""

    n: int  # images whose labels are known
    per_label: list[LabelScores]
    mean_average_precision: float | None  # macro AP over labels with support
    micro_average_precision: float | None
    micro_precision: float
    micro_recall: float
    micro_f1: float
    macro_f1: float  # over labels with support
    samples_f1: float
    subset_accuracy: float
    hamming_loss: float
    true_cardinality: float  # mean labels per image
    predicted_cardinality: float
    true_counts: list[int]  # images with 0, 1, 2, ... true labels
    predicted_counts: list[int]  # the same for predicted labels
    cooccurrence: sparse.csr_matrix  # (K, K) images carrying both labels; the diagonal is the support
    predicted_cooccurrence: sparse.csr_matrix  # (K, K) images given both labels


@dataclass
class _Ranked:
    """One label's images ranked by score, read at each distinct score (highest first):
    tied images enter together, so the order among ties never matters."""

    scores: np.ndarray  # the distinct scores, highest first
    tp: np.ndarray  # positives at or above each
    taken: np.ndarray  # images at or above each
    positives: int


def _ranked(truth: np.ndarray, scores: np.ndarray) -> _Ranked:
    order = np.argsort(-scores)
    s, t = scores[order], truth[order].astype(bool)
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # the last of each run of equal scores
    tp = np.cumsum(t, dtype=np.int64)[ends].astype(np.float64)
    return _Ranked(s[ends], tp, (ends + 1).astype(np.float64), int(t.sum()))


def _average_precision(r: _Ranked) -> float | None:
    if r.positives == 0:
        return None
    recall = r.tp / r.positives
    return float(np.sum(np.diff(recall, prepend=0.0) * (r.tp / r.taken)))


def _best_f1(r: _Ranked) -> tuple[float, float] | None:
    if r.positives == 0:
        return None
    f1 = 2 * r.tp / (r.taken + r.positives)
    i = int(np.argmax(f1))
    return float(f1[i]), float(r.scores[i])


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float | None:
    """scikit-learn's average precision of one label (see the module's docstring)."""
    return _average_precision(_ranked(truth, scores))


def best_f1(truth: np.ndarray, scores: np.ndarray) -> tuple[float, float] | None:
    """The highest F1 over thresholds (each distinct score) and the threshold; None
    without a positive image."""
    return _best_f1(_ranked(truth, scores))


def _prf(tp: np.ndarray, predicted: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    precision = np.divide(tp, predicted, out=np.zeros(tp.shape), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(tp.shape), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(tp.shape), where=denom > 0)
    return precision, recall, f1


def _histogram(counts: np.ndarray, k: int) -> list[int]:
    top = int(counts.max()) if counts.size else 0
    return [int(c) for c in np.bincount(counts, minlength=min(k, top) + 1)]


def multilabel_metrics(
    truth: np.ndarray, known: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, classes: list[str]
) -> MultiLabelMetrics | None:
    """Metrics over the images whose labels are known (``known``); ``truth`` is the
    (N, K) 0/1 matrix of true labels, ``probs`` the (N, K) independent probabilities.
    None when no image's labels are known."""
    if not np.any(known):
        return None
    y = truth[known].astype(bool)
    # As given (float32 from ``independent_probabilities``): ranks, ties and threshold
    # decisions are those of the values themselves, and a float64 copy of a million
    # images of 600 labels would be 4.8 GB.
    p = probs[known]
    pred = p >= thresholds[None, :]
    n, k = y.shape
    tp = (y & pred).sum(axis=0).astype(np.float64)
    support = y.sum(axis=0)
    predicted = pred.sum(axis=0)
    precision, recall, f1 = _prf(tp, predicted, support)
    per_label = []
    for j in range(k):
        ranked = _ranked(y[:, j], p[:, j])
        best = _best_f1(ranked)
        per_label.append(
            LabelScores(
                name=classes[j],
                threshold=float(thresholds[j]),
                support=int(support[j]),
                predicted=int(predicted[j]),
                precision=float(precision[j]),
                recall=float(recall[j]),
                f1=float(f1[j]),
                average_precision=_average_precision(ranked),
                best_f1=None if best is None else best[0],
                best_threshold=None if best is None else best[1],
            )
        )
    aps = [s.average_precision for s in per_label if s.average_precision is not None]
    micro_p, micro_r, micro_f = _prf(
        np.array([tp.sum()]), np.array([predicted.sum()]), np.array([support.sum()])
    )  # fmt: skip
    # Per image: F1 between the true and the predicted set (an empty pair scores 1).
    both = (y & pred).sum(axis=1)
    sizes = y.sum(axis=1) + pred.sum(axis=1)
    image_f1 = np.divide(2.0 * both, sizes, out=np.ones(n), where=sizes > 0)
    has = support > 0
    true_sets, pred_sets = y.sum(axis=1), pred.sum(axis=1)
    return MultiLabelMetrics(
        n=n,
        per_label=per_label,
        mean_average_precision=float(np.mean(aps)) if aps else None,
        micro_average_precision=average_precision(y.ravel(), p.ravel()),
        micro_precision=float(micro_p[0]),
        micro_recall=float(micro_r[0]),
        micro_f1=float(micro_f[0]),
        macro_f1=float(f1[has].mean()) if has.any() else 0.0,
        samples_f1=float(image_f1.mean()),
        subset_accuracy=float(np.mean(np.all(y == pred, axis=1))),
        hamming_loss=float(np.mean(y != pred)),
        true_cardinality=float(true_sets.mean()),
        predicted_cardinality=float(pred_sets.mean()),
        true_counts=_histogram(true_sets, k),
        predicted_counts=_histogram(pred_sets, k),
        cooccurrence=cooccurrence(y),
        predicted_cooccurrence=cooccurrence(pred),
    )


DENSE_LABELS = 2048  # up to this many labels the K x K counts are computed dense (32 MB)


def cooccurrence(labels: np.ndarray, chunk: int = 65536) -> sparse.csr_matrix:
    """(K, K) counts of images carrying both labels, from an (N, K) 0/1 matrix, as a
    sparse matrix (the diagonal is each label's count).

    Up to :data:`DENSE_LABELS` labels the counts are summed densely over row chunks (a
    million images of 600 labels never become one float copy).  Past that -- a tagger of
    ImageNet-21k's 21,843 labels -- a dense K x K table would be 3.8 GB, so the chunks
    are multiplied as sparse matrices and only the pairs that occur are kept."""
    k = labels.shape[1]
    if k <= DENSE_LABELS:
        out = np.zeros((k, k), np.int64)
        for start in range(0, len(labels), chunk):
            part = labels[start : start + chunk].astype(np.float32)
            # Exact: float32 holds every count of a chunk (at most 65,536) without rounding;
            # einsum's own loop measured 3-10x faster here than BLAS on the transposed view.
            out += np.rint(np.einsum("ij,ik->jk", part, part)).astype(np.int64)
        return sparse.csr_matrix(out)
    total = sparse.csr_matrix((k, k), dtype=np.int64)
    step = max(1, min(chunk, (1 << 26) // k))  # dense rows converted at a time: 64 M cells
    for start in range(0, len(labels), step):
        part = sparse.csr_matrix(labels[start : start + step] != 0).astype(np.int64)
        total = total + (part.T @ part).tocsr()
    return total


@dataclass
class LabelSuspect:
    """A label the neighbours and the model agree is missing from an image, or extra."""

    row: int  # row in the features
    label: int  # the label (model output index)
    kind: str  # "missing" (not given, but the model and the neighbours see it) or "extra"
    probability: float  # the model's probability of the label
    neighbour_share: float  # share of the image's labelled neighbours that carry it
    score: float  # the weaker of the two pieces of evidence: higher is surer


@dataclass
class LabelSuspicions:
    suspects: list[LabelSuspect]  # surest first, at most :data:`MAX_LABEL_SUSPECTS`
    missing: int  # labels suspected missing, in all
    extra: int  # labels suspected extra, in all
    checked: int  # images with known labels and at least one labelled neighbour


def label_suspects(
    truth: np.ndarray, known: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, neighbours: np.ndarray
) -> LabelSuspicions:
    """Labels suspected missing or extra, surest first.

    ``neighbours`` are each image's k nearest rows at a deep layer (-1: none).  A label
    is **missing** from an image when the model gives it at least its threshold and at
    least :data:`MISSING_SHARE` of the neighbours carry it; **extra** when the model
    gives it less than its threshold and at most :data:`EXTRA_SHARE` of the neighbours
    carry it.  The score is the weaker of the two: min(p, share) for a missing label,
    min(1 - p, 1 - share) for an extra one."""
    valid = (neighbours >= 0) & known[np.maximum(neighbours, 0)]
    counts = valid.sum(axis=1)
    rows = known & (counts > 0)
    found: list[LabelSuspect] = []
    missing = extra = 0
    # In row chunks: the neighbours' labels of every image at once would be N x k x K.
    for start in range(0, len(truth), 4096):
        end = min(start + 4096, len(truth))
        nb = np.maximum(neighbours[start:end], 0)
        carried = (truth[nb] * valid[start:end, :, None]).sum(axis=1)
        share = carried / np.maximum(counts[start:end], 1)[:, None]
        p = probs[start:end].astype(np.float64)
        said = p >= thresholds[None, :]
        own = truth[start:end]
        checked = rows[start:end, None]
        masks = {
            "missing": checked & (own == 0) & said & (share >= MISSING_SHARE),
            "extra": checked & (own == 1) & ~said & (share <= EXTRA_SHARE),
        }
        missing += int(masks["missing"].sum())
        extra += int(masks["extra"].sum())
        for kind, mask in masks.items():
            for i, j in zip(*np.nonzero(mask), strict=True):
                pij, sij = float(p[i, j]), float(share[i, j])
                score = min(pij, sij) if kind == "missing" else min(1.0 - pij, 1.0 - sij)
                found.append(LabelSuspect(int(start + i), int(j), kind, pij, sij, score))
        if len(found) > 4 * MAX_LABEL_SUSPECTS:
            found.sort(key=lambda s: (-s.score, s.row, s.label))
            del found[MAX_LABEL_SUSPECTS:]
    found.sort(key=lambda s: (-s.score, s.row, s.label))
    return LabelSuspicions(found[:MAX_LABEL_SUSPECTS], missing, extra, int(rows.sum()))


def independent_probabilities(outputs: np.ndarray, activation: str | None) -> tuple[np.ndarray, str, list[str]]:
    """Each label's probability from the model's outputs, what the outputs were, and
    what the reader should know about that.

    A graph that ends in a sigmoid outputs the probabilities; one that ends in a softmax
    outputs competing probabilities (kept as they are, with a warning: a threshold of 0.5
    then finds at most one label); any other output is logits, and the sigmoid is
    applied -- unless every value already lies in [0, 1], which logits almost never do:
    those are read as probabilities, and the report says so."""
    # float32 throughout: a million images of 600 labels are 2.4 GB a copy.
    out = np.asarray(outputs, np.float32)
    inside = bool(out.size) and bool(np.all((out >= 0.0) & (out <= 1.0)))
    if activation == "sigmoid":
        return np.clip(out, 0.0, 1.0), "sigmoid probabilities", []
    if activation == "softmax":
        return (
            out,
            "softmax probabilities",
            [
                "the model ends in a softmax, so its labels compete for one unit of probability: at a threshold of "
                "0.5 it can predict at most one label per image (a multi-label model ends in a sigmoid or in logits)"
            ],
        )
    if inside:
        return (
            out,
            "probabilities",
            [
                "no final sigmoid was found in the model, but every output lies in [0, 1]: the outputs are read as "
                "probabilities, not logits"
            ],
        )
    # The sigmoid as (1 + tanh(z / 2)) / 2: no overflow for any logit.
    return (0.5 * (1.0 + np.tanh(out * 0.5))).astype(np.float32), "logits", []
