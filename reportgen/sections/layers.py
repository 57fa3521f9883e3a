"""The layer-by-layer part of the report: kNN tables and per-layer kNN accuracy,
suspected mislabels and near-duplicates, and the aligned t-SNE of every layer."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from reportgen.analyses.knn import LayerKnn, find_neighbours, layer_knn
from reportgen.analyses.suspects import (
    DUPLICATE_RATIO,
    DuplicatePair,
    Mislabel,
    flagged_mislabels,
    label_scores,
    merge_pairs,
    near_duplicates,
)
from reportgen.analyses.tsne import tsne_layers
from reportgen.contents import (
    DuplicateEntry,
    ExplorerSection,
    KnnQuery,
    KnnSection,
    MislabelEntry,
    ReferenceSection,
    SuspectsSection,
    TsneSection,
)
from reportgen.extract import Features
from reportgen.models import INPUT_LAYER, LOGITS_LAYER
from reportgen.models.base import channel_means
from reportgen.models.cuda_knn import cuda_ready, knn_search_cuda
from reportgen.report import LayerSummary
from reportgen.sections import ImageSet, SectionInputs, label_name, neighbour_strip
from reportgen.sections.explorer import build_explorer
from reportgen.util import release

# Suspects kept for the HTML and the JSON, most suspicious first: more than a person
# works through in one sitting, and a bound on both files whatever the folder's size.
SHOWN_SUSPECTS = 200


@dataclass
class RowNames:
    """How the report names the rows of the features: files, labels, predictions."""

    audited: ImageSet
    ref: ImageSet  # where neighbours come from: the audited set itself, or ``--reference``
    vocab: list[str]  # label vocabulary: the folder's classes, then the reference's
    predicted: list[str]  # per audited row, the predicted class's name
    wrong: np.ndarray  # per audited row, misclassified (labels known and prediction differs)
    groups: np.ndarray  # per audited row, its group in the query selector (label, or prediction)


@dataclass
class LayerSections:
    """What :func:`build` makes: the layer table's rows with their scores, and the sections
    that read the neighbours (each ``None`` where the run did not make it)."""

    summaries: list[LayerSummary]
    warnings: list[str] = field(default_factory=list)  # for the report's warnings
    knn: KnnSection | None = None
    suspects: SuspectsSection | None = None
    tsne: TsneSection | None = None
    explorer: ExplorerSection | None = None
    reference: ReferenceSection | None = None


def choose_queries(
    groups: np.ndarray,
    wrong: np.ndarray,
    wrong_score: np.ndarray,
    per_class: int,
    cap: int,
    seed: int,
) -> list[int]:
    """A few seeded picks per group (class), then misclassified images, most confident
    first, up to ``cap`` in all."""
    rng = np.random.default_rng(seed)
    picks: list[int] = []
    for g in np.unique(groups[groups >= 0]):
        members = np.flatnonzero(groups == g)
        take = min(per_class, len(members))
        picks.extend(sorted(int(i) for i in rng.choice(members, size=take, replace=False)))
    chosen = picks[:cap]
    taken = set(chosen)
    for i in np.flatnonzero(wrong)[np.argsort(-wrong_score[wrong], kind="stable")]:
        if len(chosen) >= cap:
            break
        if int(i) not in taken:
            chosen.append(int(i))
            taken.add(int(i))
    return chosen


def build_knn_section(
    knn: dict[str, LayerKnn],
    rows: list[int],
    names: RowNames,
    *,
    layers: list[str],
    key_layers: list[str],
    k: int,
    metric: str,
    source: str,
) -> KnnSection:
    """The kNN tables: each query row's neighbours at every layer, named."""
    audited, ref, vocab = names.audited, names.ref, names.vocab
    queries = []
    for row in rows:
        own = int(audited.labels[row])
        neighbours = {
            layer: neighbour_strip(
                knn[layer].neighbours.indices[row], knn[layer].neighbours.distances[row], ref, own, vocab
            )
            for layer in layers
        }
        queries.append(
            KnnQuery(
                row,
                audited.files[row],
                audited.key(row),
                label_name(vocab, own),
                names.predicted[row],
                bool(names.wrong[row]),
                f"c{names.groups[row]}",
                neighbours,
            )
        )
    return KnnSection(k, metric, source, layers, key_layers, queries, vocab)


def build_suspects_section(
    mislabels: list[Mislabel],
    duplicates: list[DuplicatePair],
    knn: dict[str, LayerKnn],
    names: RowNames,
    *,
    deep_layers: list[str],
    dup_layers: list[str],
    dup_ratio: float,
    limit: int = SHOWN_SUSPECTS,
) -> SuspectsSection:
    """The most suspicious mislabels (with their neighbours at the deepest layer) and
    near-duplicate pairs, named, up to ``limit`` of each."""
    audited, ref, vocab, predicted = names.audited, names.ref, names.vocab, names.predicted
    deepest = knn[deep_layers[-1]].neighbours if deep_layers else None
    entries = []
    for m in mislabels[:limit]:
        strip = []
        if deepest is not None:
            strip = neighbour_strip(deepest.indices[m.row], deepest.distances[m.row], ref, m.label, vocab)
        entries.append(
            MislabelEntry(
                audited.files[m.row],
                audited.key(m.row),
                vocab[m.label],
                vocab[m.suggested],
                m.score,
                m.disagreement,
                m.p_label,
                predicted[m.row],
                strip,
            )
        )
    dups = []
    for d in duplicates[:limit]:
        other = ref if d.cross else audited
        dups.append(
            DuplicateEntry(
                audited.files[d.a],
                other.files[d.b],
                audited.key(d.a),
                other.key(d.b),
                d.distance,
                d.ratio,
                d.layer,
                d.cross,
                label_name(vocab, int(audited.labels[d.a])),
                label_name(vocab, int(other.labels[d.b])),
            )
        )
    return SuspectsSection(entries, dups, deep_layers, dup_layers, dup_ratio)


def shared_images(root: Path, files: list[str], ref_root: Path, ref_files: list[str]) -> np.ndarray:
    """For each audited file, the row of the same file (links resolved) in the reference,
    -1 where the reference does not hold it: an image is never its own neighbour or its
    own duplicate, even when ``--reference`` names the audited folder itself."""
    rows = {os.path.realpath(ref_root / f): i for i, f in enumerate(ref_files)}
    return np.array([rows.get(os.path.realpath(root / f), -1) for f in files], np.int64)


def deep_layers(names: list[str]) -> tuple[list[str], str]:
    """The layers the suspects read: the last two feature layers (not the pixels, not the
    logits) for mislabels, the last of them for near-duplicates; the logits as fallback."""
    inner = [n for n in names if n not in (INPUT_LAYER, LOGITS_LAYER)]
    deep = inner[-2:] if inner else [n for n in names if n == LOGITS_LAYER]
    return deep, (deep[-1] if deep else names[-1])


def build(inputs: SectionInputs, reference: tuple[Features, list[str]] | None) -> LayerSections:
    """kNN tables and per-layer kNN accuracy, suspects, and the t-SNE of every layer;
    ``reference`` is the ``--reference`` folder's features and class names."""
    cfg, result, features, clock = inputs.cfg, inputs.result, inputs.features, inputs.clock
    probs, truth, pred, class_map = inputs.probs, inputs.truth, inputs.pred, inputs.class_map

    names = [layer.name for layer in features.layers if layer.name not in inputs.unusable]
    if not names:
        return LayerSections([replace(s, note=inputs.unusable.get(s.name, s.note)) for s in result.layers])
    out = LayerSections([])
    vocab = list(result.dataset.folder_classes)
    labels = features.labels.copy()
    audited = ImageSet(features.files, labels)
    ref_set = audited
    reference_arrays = None
    ref_labels = labels
    own_rows: np.ndarray | None = None
    if reference is not None:
        ref_features, ref_classes = reference
        for c in ref_classes:
            if c not in vocab:
                vocab.append(c)
        ref_labels = np.array([vocab.index(ref_classes[i]) for i in ref_features.labels], np.int64)
        ref_set = ImageSet(ref_features.files, ref_labels, reference=True)
        reference_arrays = ref_features.arrays
        out.reference = ReferenceSection(str(cfg.reference), ref_features.n, ref_classes)
        assert cfg.reference is not None
        own_rows = shared_images(cfg.images, features.files, cfg.reference, ref_features.files)
        shared = int((own_rows >= 0).sum())
        if shared:
            out.warnings.append(
                f"--reference {cfg.reference} holds {shared} of the audited images themselves (the same files"
                f"{', it is the audited folder' if shared == features.n == ref_features.n else ''}); each is left out "
                "of its own neighbours and near-duplicates, so kNN accuracy and leakage are measured on the rest"
            )
        else:
            own_rows = None

    # With a CUDA device every search is exact, on it; without, large ones use the index.
    accelerated = knn_search_cuda if cuda_ready(cfg.device) else None
    with clock("knn"), clock.bar("kNN", len(names), "layer") as bar:
        knn = {}
        for name in names:
            bar.set_postfix_str(name, refresh=False)
            knn[name] = layer_knn(
                features.arrays[name],
                labels,
                cfg.k,
                metric=cfg.metric,
                reference=None if reference_arrays is None else reference_arrays[name],
                reference_labels=ref_labels,
                own_rows=own_rows,
                layer=name,
                search=cfg.knn_search,
                seed=cfg.seed,
                accelerated=accelerated,
            )
            release(features.arrays[name])
            bar.update()
    summaries = {
        s.name: replace(
            s,
            knn_accuracy=knn[s.name].accuracy,
            knn_agreement=knn[s.name].agreement,
            note=knn[s.name].note,
            knn_search=knn[s.name].search,
        )
        if s.name in knn
        else replace(s, note=inputs.unusable[s.name])
        for s in result.layers
    }
    with clock("knn"):
        # The same vote on each grid layer's global mean, exact from its cells: the
        # accuracy the classic average would show, beside what the grid keeps.
        by_name = {layer.name: layer for layer in features.layers}
        for summary in summaries.values():
            layer = by_name[summary.name]
            if layer.cells is None or summary.name not in knn or knn[summary.name].accuracy is None:
                continue
            summary.knn_accuracy_global_mean = layer_knn(
                channel_means(features.arrays[layer.name], layer),
                labels,
                cfg.k,
                metric=cfg.metric,
                reference=None if reference_arrays is None else channel_means(reference_arrays[layer.name], layer),
                reference_labels=ref_labels,
                own_rows=own_rows,
                layer=layer.name,
                search=cfg.knn_search,
                seed=cfg.seed,
                accelerated=accelerated,
            ).accuracy
            release(features.arrays[layer.name])

    predicted = [class_map.classes[p] for p in pred]
    wrong = (truth >= 0) & (pred != truth)
    groups = labels if result.dataset.labeled else pred
    rows = choose_queries(
        groups, wrong, probs[np.arange(len(pred)), pred], cfg.queries_per_class, cfg.max_queries, cfg.seed
    )
    inner = [n for n in names if n not in (INPUT_LAYER, LOGITS_LAYER)]
    key_layers = [n for n in (names[0], inner[len(inner) // 2] if inner else None, deep_layers(names)[1]) if n]
    key_layers = list(dict.fromkeys(key_layers))
    source = (
        "leave-one-out within the audited folder" if cfg.reference is None else f"the reference folder {cfg.reference}"
    )
    row_names = RowNames(audited, ref_set, vocab, predicted, wrong, groups)
    out.knn = build_knn_section(
        knn, rows, row_names, layers=names, key_layers=key_layers, k=cfg.k, metric=cfg.metric, source=source
    )

    deep, dup_layer = deep_layers(names)
    p_label = np.where(truth >= 0, probs[np.arange(len(truth)), np.maximum(truth, 0)], np.nan)
    with clock("suspects"):
        evidence = label_scores(labels, p_label, [knn[n].neighbours for n in deep], ref_labels)
        mislabels = flagged_mislabels(labels, evidence)
        dup_ratio = DUPLICATE_RATIO
        dup_layers = list(dict.fromkeys(n for n in (INPUT_LAYER, dup_layer) if n in knn))
        found = []
        for name in dup_layers:
            if reference_arrays is None:
                pairs, _ = near_duplicates(knn[name].neighbours, dup_ratio, layer=name)
                found.append(pairs)
            else:
                # Within the audited folder, and across into the reference (leakage).
                own, _ = find_neighbours(
                    features.arrays[name],
                    features.arrays[name],
                    1,
                    metric=cfg.metric,
                    leave_one_out=True,
                    mode=cfg.knn_search,
                    seed=cfg.seed,
                    accelerated=accelerated,
                )
                scale = float(np.median(own.distances[:, 0])) if own.indices.shape[1] else 0.0
                found.append(near_duplicates(own, dup_ratio, scale=scale, layer=name)[0])
                cross, _ = near_duplicates(knn[name].neighbours, dup_ratio, cross=True, scale=scale, layer=name)
                # A reference image that is itself audited makes a pair within the folder
                # (found above), not a leak between the two.
                audited_too = set() if own_rows is None else set(own_rows[own_rows >= 0].tolist())
                found.append([d for d in cross if d.b not in audited_too])
        dups = merge_pairs(*found)
    out.suspects = build_suspects_section(
        mislabels, dups, knn, row_names, deep_layers=deep, dup_layers=dup_layers, dup_ratio=dup_ratio
    )

    if cfg.tsne:
        with clock("tsne"), clock.bar("t-SNE", len(names), "layer") as bar:
            colour = labels if result.dataset.labeled else pred
            tsne = tsne_layers(
                features.arrays, names, colour, seed=cfg.seed, max_points=cfg.tsne_max_points, on_layer=bar.update
            )
        for summary in summaries.values():
            summary.tsne_trustworthiness = tsne.trustworthiness.get(summary.name)
            notes = [summary.note, tsne.notes.get(summary.name, "")]
            summary.note = "; ".join(dict.fromkeys(n for n in notes if n))
        colour_names = vocab if result.dataset.labeled else class_map.classes
        out.tsne = TsneSection(tsne, colour[tsne.rows], wrong[tsne.rows], colour_names)
        if cfg.explorer:
            partners: dict[int, list[str]] = {}
            for d in dups:
                # A reference image is not on the map: named as such, so the page never
                # mistakes it for an audited file of the same name.
                partners.setdefault(d.a, []).append(
                    f"{cfg.reference}/{ref_set.files[d.b]} (reference)" if d.cross else audited.files[d.b]
                )
                if not d.cross:
                    partners.setdefault(d.b, []).append(audited.files[d.a])
            with clock("explorer"):
                out.explorer = build_explorer(
                    layers=names,
                    rows=tsne.rows,
                    embeddings=tsne.embeddings,
                    arrays=features.arrays,
                    files=features.files,
                    labels=labels,
                    label_names=vocab,
                    preds=pred,
                    truth=truth,
                    class_names=class_map.classes,
                    probs=probs,
                    scores=evidence,
                    mislabels={m.row: m.suggested for m in mislabels},
                    duplicates=partners,
                    k=cfg.k,
                    metric=cfg.metric,
                    knn=knn if reference is None else None,
                    n_total=features.n,
                    labeled=bool(result.dataset.labeled),
                )
    out.summaries = list(summaries.values())
    return out
