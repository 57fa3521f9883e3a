"""What several sections read from the neighbours of every layer, computed once each (see
``Shared.once``): the kNN of every image at every usable layer (:func:`neighbourhood`),
the suspects those neighbours point at (:func:`suspicions`) and the aligned t-SNE
(:func:`embedding`).  The layer table, the kNN tables, the suspects, the t-SNE and the
explorer are sections that read these."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reportgen.analyses.knn import AcceleratedSearch, LayerKnn, find_neighbours, layer_knn
from reportgen.analyses.suspects import (
    DUPLICATE_RATIO,
    DuplicatePair,
    LabelScores,
    Mislabel,
    flagged_mislabels,
    label_scores,
    merge_pairs,
    near_duplicates,
)
from reportgen.analyses.tsne import TsneResult, tsne_layers
from reportgen.models import INPUT_LAYER, LOGITS_LAYER, channel_means, cuda_ready, knn_search_cuda
from reportgen.sections.base import ImageSet, Shared
from reportgen.util import release


@dataclass
class Neighbourhood:
    """The neighbours of every image at every usable layer, and how to name the rows."""

    names: list[str]  # the layers the distances use, in layer order (unusable ones left out)
    knn: dict[str, LayerKnn]  # layer -> every audited image's neighbours and the layer's kNN scores
    global_mean_accuracy: dict[str, float | None]  # grid layers: kNN accuracy of the global mean alone
    audited: ImageSet
    ref: ImageSet  # where neighbours come from: the audited set itself, or ``--reference``
    vocab: list[str]  # label vocabulary: the folder's classes, then the reference's
    ref_labels: np.ndarray  # the reference rows' labels in ``vocab``
    own_rows: np.ndarray | None  # per audited image, its own row in the reference (-1: none)
    reference_arrays: dict[str, np.ndarray] | None
    source: str  # "leave-one-out within the audited folder" or the reference folder
    predicted: list[str]  # per audited row, the predicted class's name
    wrong: np.ndarray  # per audited row, misclassified (labels known and prediction differs)
    groups: np.ndarray  # per audited row, its group in the query selector (label, or prediction)
    accelerated: AcceleratedSearch | None  # the exact GPU search, when a CUDA device is there


def shared_images(root: Path, files: list[str], ref_root: Path, ref_files: list[str]) -> np.ndarray:
    """For each audited file, the row of the same file (links resolved) in the reference,
    -1 where the reference does not hold it: an image is never its own neighbour or its
    own duplicate, even when ``--reference`` names the audited folder itself."""
    rows = {os.path.realpath(ref_root / f): i for i, f in enumerate(ref_files)}
    return np.array([rows.get(os.path.realpath(root / f), -1) for f in files], np.int64)


def neighbourhood(shared: Shared) -> Neighbourhood:
    """kNN of every audited image at every usable layer (leave-one-out, or from the
    ``--reference`` folder), with each grid layer's global mean scored beside it."""
    cfg, features, clock, result = shared.cfg, shared.features, shared.clock, shared.result
    names = [layer.name for layer in features.layers if layer.name not in shared.unusable]
    vocab = list(result.dataset.folder_classes)
    labels = features.labels.copy()
    audited = ImageSet(features.files, labels)
    ref_set, ref_labels, own_rows, reference_arrays = audited, labels, None, None
    if shared.reference is not None:
        ref_features, ref_classes = shared.reference
        vocab += [c for c in ref_classes if c not in vocab]
        ref_labels = np.array([vocab.index(ref_classes[i]) for i in ref_features.labels], np.int64)
        ref_set = ImageSet(ref_features.files, ref_labels, reference=True)
        reference_arrays = ref_features.arrays
        assert cfg.reference is not None
        own_rows = shared_images(cfg.images, features.files, cfg.reference, ref_features.files)
        count = int((own_rows >= 0).sum())
        if count:
            itself = ", it is the audited folder" if count == features.n == ref_features.n else ""
            shared.notes.append(
                f"--reference {cfg.reference} holds {count} of the audited images themselves (the same files{itself}); "
                "each is left out of its own neighbours and near-duplicates, so kNN accuracy and leakage are "
                "measured on the rest"
            )
        else:
            own_rows = None
    # With a CUDA device every search is exact, on it; without, large ones use the index.
    accelerated = knn_search_cuda if cuda_ready(cfg.device) else None

    def search(name: str, rows: np.ndarray, reference: np.ndarray | None) -> LayerKnn:
        return layer_knn(
            rows,
            labels,
            cfg.k,
            metric=cfg.metric,
            reference=reference,
            reference_labels=ref_labels,
            own_rows=own_rows,
            layer=name,
            search=cfg.knn_search,
            seed=cfg.seed,
            accelerated=accelerated,
        )

    knn: dict[str, LayerKnn] = {}
    with clock("knn"), clock.bar("kNN", len(names), "layer") as bar:
        for name in names:
            bar.set_postfix_str(name, refresh=False)
            knn[name] = search(
                name, features.arrays[name], None if reference_arrays is None else reference_arrays[name]
            )
            release(features.arrays[name])
            bar.update()
    global_mean: dict[str, float | None] = {}
    with clock("knn"):
        # The same vote on each grid layer's global mean, exact from its cells: the
        # accuracy the classic average would show, beside what the grid keeps.
        for layer in features.layers:
            if layer.cells is None or layer.name not in knn or knn[layer.name].accuracy is None:
                continue
            ref_means = None if reference_arrays is None else channel_means(reference_arrays[layer.name], layer)
            global_mean[layer.name] = search(
                layer.name, channel_means(features.arrays[layer.name], layer), ref_means
            ).accuracy
            release(features.arrays[layer.name])
    classes = shared.class_map.classes
    wrong = (shared.truth >= 0) & (shared.pred != shared.truth)
    source = (
        "leave-one-out within the audited folder" if cfg.reference is None else f"the reference folder {cfg.reference}"
    )
    return Neighbourhood(
        names=names,
        knn=knn,
        global_mean_accuracy=global_mean,
        audited=audited,
        ref=ref_set,
        vocab=vocab,
        ref_labels=ref_labels,
        own_rows=own_rows,
        reference_arrays=reference_arrays,
        source=source,
        predicted=[classes[p] for p in shared.pred],
        wrong=wrong,
        groups=labels if result.dataset.labeled else shared.pred,
        accelerated=accelerated,
    )


def deep_layers(names: list[str]) -> tuple[list[str], str]:
    """The layers the suspects read: the last two feature layers (not the pixels, not the
    logits) for mislabels, the last of them for near-duplicates; the logits as fallback."""
    inner = [n for n in names if n not in (INPUT_LAYER, LOGITS_LAYER)]
    deep = inner[-2:] if inner else [n for n in names if n == LOGITS_LAYER]
    return deep, (deep[-1] if deep else names[-1])


@dataclass
class Suspicions:
    """Suspected mislabels and near-duplicate pairs, and where they were read."""

    evidence: LabelScores  # per image: the mislabel score's parts
    mislabels: list[Mislabel]  # flagged, most suspicious first
    duplicates: list[DuplicatePair]  # closest first
    deep_layers: list[str]  # the layers the mislabel score reads
    duplicate_layers: list[str]
    ratio: float  # a pair's distance over the median nearest-neighbour distance, at most


def suspicions(shared: Shared) -> Suspicions | None:
    """Mislabels (deep neighbours and the model agreeing against the label) and
    near-duplicates (within the folder and, with ``--reference``, across into it);
    None when no layer can be measured."""
    hood = shared.once(neighbourhood)
    if not hood.names:
        return None
    cfg, features = shared.cfg, shared.features
    truth, probs = shared.truth, shared.probs
    deep, dup_layer = deep_layers(hood.names)
    p_label = np.where(truth >= 0, probs[np.arange(len(truth)), np.maximum(truth, 0)], np.nan)
    labels = hood.audited.labels
    with shared.clock("suspects"):
        evidence = label_scores(labels, p_label, [hood.knn[n].neighbours for n in deep], hood.ref_labels)
        mislabels = flagged_mislabels(labels, evidence)
        dup_layers = list(dict.fromkeys(n for n in (INPUT_LAYER, dup_layer) if n in hood.knn))
        found = []
        for name in dup_layers:
            if hood.reference_arrays is None:
                pairs, _ = near_duplicates(hood.knn[name].neighbours, DUPLICATE_RATIO, layer=name)
                found.append(pairs)
                continue
            # Within the audited folder, and across into the reference (leakage).
            own, _ = find_neighbours(
                features.arrays[name],
                features.arrays[name],
                1,
                metric=cfg.metric,
                leave_one_out=True,
                mode=cfg.knn_search,
                seed=cfg.seed,
                accelerated=hood.accelerated,
            )
            scale = float(np.median(own.distances[:, 0])) if own.indices.shape[1] else 0.0
            found.append(near_duplicates(own, DUPLICATE_RATIO, scale=scale, layer=name)[0])
            cross, _ = near_duplicates(hood.knn[name].neighbours, DUPLICATE_RATIO, cross=True, scale=scale, layer=name)
            # A reference image that is itself audited makes a pair within the folder
            # (found above), not a leak between the two.
            audited_too = set() if hood.own_rows is None else set(hood.own_rows[hood.own_rows >= 0].tolist())
            found.append([d for d in cross if d.b not in audited_too])
        duplicates = merge_pairs(*found)
    return Suspicions(evidence, mislabels, duplicates, deep, dup_layers, DUPLICATE_RATIO)


def embedding(shared: Shared) -> TsneResult | None:
    """The aligned t-SNE of every usable layer (None with ``--no-tsne`` or no such layer),
    coloured by folder label, or by prediction in an unlabeled folder."""
    cfg = shared.cfg
    names = [layer.name for layer in shared.features.layers if layer.name not in shared.unusable]
    if not cfg.tsne or not names:
        return None
    with shared.clock("tsne"), shared.clock.bar("t-SNE", len(names), "layer") as bar:
        return tsne_layers(
            shared.features.arrays,
            names,
            colours(shared),
            seed=cfg.seed,
            max_points=cfg.tsne_max_points,
            on_layer=bar.update,
        )


def colours(shared: Shared) -> np.ndarray:
    """Per image, the class it is coloured by: its folder label, or (unlabeled) its prediction."""
    return shared.features.labels if shared.result.dataset.labeled else shared.pred
