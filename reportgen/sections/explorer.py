"""The interactive explorer: every embedded image as a point on the aligned t-SNE maps,
with what the page needs to answer "which image is this, and who are its neighbours?".

The section holds numbers only (positions per layer, neighbour indices, labels, scores);
the render stage packs them for the page (:func:`reportgen.render.explorer_payload`)
and draws the thumbnails into sprite sheets.  Points are the t-SNE's points: every image
up to ``--tsne-max-points``, above that the same seeded stratified sample as the maps.

Neighbours are taken among the points themselves, so that every neighbour is a point on
the map one can click.  When the map holds every audited image and the kNN section reads
the audited folder (no ``--reference``), they are the kNN section's own neighbours
(leave-one-out, same metric, same tie rule); otherwise they are computed here, exactly,
among the points, and the page says so.
"""

from __future__ import annotations

import numpy as np

from reportgen.analyses.knn import LayerKnn, knn_search
from reportgen.analyses.suspects import LabelScores
from reportgen.contents import ExplorerSection


def point_neighbours(
    arrays: dict[str, np.ndarray],
    layers: list[str],
    rows: np.ndarray,
    k: int,
    metric: str,
    knn: dict[str, LayerKnn] | None,
) -> np.ndarray:
    """(L, n, k) neighbour indices among the points ``rows`` at every layer.

    ``knn`` is the kNN section's result when it was computed leave-one-out over exactly
    these rows (all of them, in order): then its neighbours are reused as they are.
    """
    n = len(rows)
    k = max(0, min(k, n - 1))
    out = np.zeros((len(layers), n, k), np.int64)
    for li, name in enumerate(layers):
        if knn is not None:
            out[li] = knn[name].neighbours.indices[:, :k]
            continue
        x = arrays[name][rows]
        out[li] = knn_search(x, x, k, metric=metric, query_rows=np.arange(n)).indices
    return out


def build_explorer(
    *,
    layers: list[str],
    rows: np.ndarray,
    embeddings: dict[str, np.ndarray | None],
    arrays: dict[str, np.ndarray],
    files: list[str],
    labels: np.ndarray,
    label_names: list[str],
    preds: np.ndarray,
    truth: np.ndarray,
    class_names: list[str],
    probs: np.ndarray,
    scores: LabelScores | None,
    mislabels: dict[int, int],
    duplicates: dict[int, list[str]],
    k: int,
    metric: str,
    knn: dict[str, LayerKnn] | None,
    n_total: int,
    labeled: bool,
) -> ExplorerSection | None:
    """The explorer's data for the points ``rows`` (the t-SNE's points).

    ``labels`` index ``label_names`` (-1 unlabeled) and ``preds`` index ``class_names``,
    both per feature row; ``truth`` is the true output index (-1 unknown), so that "right"
    and "wrong" are the report's; ``mislabels`` maps a flagged row to its suggested label;
    ``duplicates`` a row to the files it near-duplicates; ``knn`` as in
    :func:`point_neighbours`.  None when no layer has a map.
    """
    shown = [name for name in layers if embeddings.get(name) is not None]
    if not shown or len(rows) < 2:
        return None
    # One vocabulary for both labels and predictions, so a class has one colour whichever
    # the page colours by.
    names = list(label_names) + [c for c in class_names if c not in label_names]
    pred_names = np.array([names.index(c) for c in class_names], np.int64)
    point_of = {int(r): i for i, r in enumerate(rows)}
    positions = np.stack([np.asarray(embeddings[name], np.float32) for name in shown])
    full = knn is not None and np.array_equal(rows, np.arange(n_total))
    return ExplorerSection(
        layers=shown,
        rows=np.asarray(rows, np.int64),
        files=[files[r] for r in rows],
        positions=positions,
        neighbours=point_neighbours(arrays, shown, rows, k, metric, knn if full else None),
        labels=np.asarray(labels, np.int64)[rows],
        preds=pred_names[np.asarray(preds, np.int64)[rows]],
        pred_outputs=np.asarray(preds, np.int64)[rows],
        confidence=probs[rows, preds[rows]].astype(np.float64),
        correct=np.where(truth[rows] < 0, -1, truth[rows] == preds[rows]).astype(np.int8),
        suspect=(np.full(len(rows), np.nan) if scores is None else scores.score[rows].astype(np.float64)),
        names=names,
        mislabels={point_of[r]: label_names[s] for r, s in mislabels.items() if r in point_of},
        duplicates={point_of[r]: v for r, v in duplicates.items() if r in point_of},
        metric=metric,
        sampled=len(rows) < n_total,
        n_total=n_total,
        neighbour_scope="all audited images" if full else f"the {len(rows):,} images on the map",
        labeled=labeled,
    )
