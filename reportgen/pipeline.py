"""``audit``: the whole run, top to bottom, in the order of the report's sections."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from reportgen import __version__
from reportgen.analyses.metrics import (
    class_balance,
    classification_metrics,
    log_odds,
    log_odds_from_probabilities,
    to_probabilities,
)
from reportgen.analyses.screen import nonfinite_rows, unusable_reason
from reportgen.clock import Clock
from reportgen.config import AuditConfig, source_date_epoch, timestamp
from reportgen.contents import Sections
from reportgen.data import ImageDataset, Preprocess, Skipped, discover, resolve_preprocess
from reportgen.errors import UserError
from reportgen.extract import (
    CachedRun,
    CacheMiss,
    Features,
    cache_key,
    discard,
    extract,
    is_features_cache,
    load_cache,
    save_cache,
    scratch_folder,
)
from reportgen.labels import ClassMap, read_labels_file, resolve_classes
from reportgen.models import INPUT_LAYER, LOGITS_LAYER, LayerInfo, ModelAdapter, ModelHandle, resolve_layers
from reportgen.models.base import pooling
from reportgen.outputs import check_apart, check_replaceable
from reportgen.pictures import build_figures
from reportgen.progress import note
from reportgen.report import (
    AuditResult,
    DatasetSummary,
    Figures,
    LayerSummary,
    ModelSummary,
    Prediction,
    report_outputs,
)
from reportgen.sections import SectionInputs
from reportgen.sections import galleries as galleries_section
from reportgen.sections import layers as layers_section
from reportgen.sections import units as units_section
from reportgen.util import file_sha256


def check_outputs(cfg: AuditConfig) -> None:
    """Before any work: every path the audit will write is apart from its inputs and
    free or provably reportgen's (see ``outputs``), so a refusal costs nothing."""
    report = report_outputs(cfg.output, cfg.json_path)
    caches = [(cfg.cache_path, "--features")] if cfg.use_cache else []
    if cfg.use_cache and cfg.reference is not None:
        caches.append((reference_cache_path(cfg), "the reference features cache"))
    check_apart(
        [(path, what) for path, _, what in report] + caches,
        files=[(cfg.model, "the model file")] + ([(cfg.labels, "the --labels file")] if cfg.labels else []),
        folders=[(cfg.images, "the image folder")]
        + ([(cfg.reference, "the --reference folder")] if cfg.reference else []),
    )
    for path, proof, what in report:
        check_replaceable(path, proof, what)
    for path, what in caches:
        check_replaceable(path, is_features_cache, what, folder=True)


def reference_cache_path(cfg: AuditConfig) -> Path:
    """Where the ``--reference`` folder's features are cached: beside the audit's cache."""
    return cfg.cache_path.with_name(cfg.cache_path.name + ".reference")


def drop_nonfinite(features: Features) -> tuple[Features, list[Skipped]]:
    """Images whose output holds NaN or infinity have no prediction: they leave the
    audit, each with a reason (a layer with such values is screened apart, see
    :func:`unusable_layers`)."""
    bad = nonfinite_rows(features.outputs)
    if not bad.any():
        return features, []
    skipped = [
        Skipped(features.files[i], "the model produced NaN or infinite values (in the output)")
        for i in np.flatnonzero(bad)
    ]
    return features.subset(~bad), skipped


def unusable_layers(*feature_sets: Features) -> dict[str, str]:
    """Layers whose values no distance can use (see ``analyses.screen``), with the reason,
    over the audited features and, when given, the reference's."""
    out: dict[str, str] = {}
    for features in feature_sets:
        for layer in features.layers:
            if layer.name not in out:
                reason = unusable_reason(features.arrays[layer.name])
                if reason:
                    out[layer.name] = reason
    return out


def dataset_sha256(files: list[str], digests: list[str]) -> str:
    """SHA-256 over the sorted (path, content hash) pairs of the audited images."""
    h = hashlib.sha256()
    for f, d in sorted(zip(files, digests, strict=True)):
        h.update(f"{f}\0{d}\n".encode())
    return h.hexdigest()


def _model_meta(adapter: ModelAdapter, pre: Preprocess) -> dict:
    info = adapter.info
    return {
        "format": info.format,
        "runtime": info.runtime,
        "device": info.device,
        "channels": info.channels,
        "num_outputs": adapter.num_outputs,
        "properties": info.properties,
        "embedded_classes": info.embedded.classes,
        "preprocess": pre.fingerprint(),
        "notes": list(adapter.notes),
    }


def _usable_cache(path: Path, key: dict, cfg: AuditConfig, notes: list[str]) -> CachedRun | None:
    """The cached run at ``path`` when it matches ``key``; otherwise None, after saying
    why a file that exists is not used (a status line; a report note when it is broken)."""
    cached = load_cache(path, key) if cfg.use_cache else None
    if isinstance(cached, CacheMiss):
        note(f"not reusing the features cache {path}: {cached.reason}; extracting again", not cfg.quiet)
        if cached.broken:
            notes.append(
                f"the features cache {path} could not be used ({cached.reason}); the features were extracted again"
            )
        return None
    return cached


def _extract_or_load(
    cfg: AuditConfig, dataset: ImageDataset, handle: ModelHandle, model_sha: str, clock: Clock, notes: list[str]
) -> tuple[Features, dict, Preprocess]:
    key = cache_key(model_sha, cfg.extraction_options(), dataset)
    cached = _usable_cache(cfg.cache_path, key, cfg, notes)
    if cached is not None:
        note(f"reusing the features cache {cfg.cache_path}", not cfg.quiet)
        meta = cached.meta["model"]
        pre = Preprocess.from_fingerprint(meta["preprocess"])
        return cached.features, meta, pre
    with clock("load model"):
        adapter = handle.open()
        pre = resolve_preprocess(adapter.info, size=cfg.size, mean=cfg.mean, std=cfg.std, resize=cfg.resize)
        adapter = handle.prepared(pre.size)
        layers = resolve_layers(cfg.layers, adapter, pre.channels, pre.size, cfg.pool_values)
    meta = _model_meta(adapter, pre)
    with clock("extract"):
        features = _extract_to(cfg.cache_path, "--features", cfg, dataset, adapter, layers, pre, key, meta)
    return features, meta, pre


def _extract_to(
    cache: Path,
    what: str,
    cfg: AuditConfig,
    dataset: ImageDataset,
    adapter: ModelAdapter,
    layers: list[LayerInfo],
    pre: Preprocess,
    key: dict,
    meta: dict,
) -> Features:
    """Extract into a scratch directory beside ``cache``, which then becomes the cache
    (``what`` names it in messages); without a cache, or with no image left, the scratch
    directory goes at once (the arrays stay mapped for this run).  Whatever stops it,
    no scratch directory is left behind."""
    folder = scratch_folder(cache)
    try:
        features = extract(
            dataset,
            adapter,
            layers,
            pre,
            folder,
            batch_size=cfg.batch_size,
            precision=cfg.feature_precision,
            show_progress=not cfg.quiet,
            decode_processes=cfg.decode_processes,
        )
        if cfg.use_cache and features.n:
            save_cache(cache, features, key, {"model": meta}, what=what)
        else:
            discard(folder)
            features.folder = None
        return features
    except BaseException:
        discard(folder)
        raise


def audit(cfg: AuditConfig) -> tuple[AuditResult, Figures]:
    """Run a whole audit and return its result and pictures (nothing is written here)."""
    clock = Clock(show=not cfg.quiet)
    epoch = source_date_epoch()
    if not cfg.model.is_file():
        raise UserError(f"model file not found: {cfg.model}")
    with clock("discover"):
        dataset = discover(cfg.images, follow_links=cfg.follow_links, max_bytes=cfg.max_image_bytes)
    check_outputs(cfg)
    with clock("hash model"):
        model_sha = file_sha256(cfg.model)
    handle = ModelHandle(cfg.model, device=cfg.device, arch=cfg.arch, trust_pickle=cfg.trust_pickle)
    notes: list[str] = []  # for the report's warnings, from the stages before them
    features, meta, pre = _extract_or_load(cfg, dataset, handle, model_sha, clock, notes)
    skipped = sorted([*dataset.skipped, *features.skipped], key=lambda s: s.file)
    features, nonfinite = drop_nonfinite(features)
    skipped = sorted(skipped + nonfinite, key=lambda s: s.file)
    if features.n == 0:
        raise UserError(f"none of the {len(dataset.records)} image files under {cfg.images} could be used")

    labels = read_labels_file(cfg.labels) if cfg.labels else None
    class_map: ClassMap = resolve_classes(
        dataset.folder_classes, meta["num_outputs"], labels=labels, embedded=meta.get("embedded_classes")
    )
    with clock("metrics"):
        probs, output_kind = to_probabilities(features.outputs)
        truth = class_map.truth(features.labels)
        pred = probs.argmax(axis=1)
        metrics = classification_metrics(truth, probs, class_map.classes)
        balance = class_balance(truth, pred, class_map.classes)
    folder_names = dataset.folder_classes
    predictions = [
        Prediction(
            file=f,
            label=folder_names[lab] if lab >= 0 else None,
            truth=int(t),
            pred=int(p),
            score=float(probs[i, p]),
            sha256=features.sha256[i],
        )
        for i, (f, lab, t, p) in enumerate(zip(features.files, features.labels, truth, pred, strict=True))
    ]
    warnings = [*notes, *meta.get("notes", []), *class_map.warnings]
    if dataset.links_not_followed:
        warnings.append(
            f"{dataset.links_not_followed} symbolic link(s) lead out of the image folder and were not followed "
            "(listed under Skipped inputs; --follow-links follows them)"
        )
    empty = [c for i, c in enumerate(folder_names) if not np.any(features.labels == i)]
    if empty:
        warnings.append(f"{len(empty)} class folder(s) have no usable image: {', '.join(empty[:10])}")
    if not dataset.labeled:
        warnings.append(
            "the image folder has no class sub-folders: images are unlabeled, so predicted classes are shown instead of accuracy"
        )

    layers = [
        LayerSummary(
            layer.name,
            tuple(layer.shape),
            layer.dim,
            layer.op,
            layer.layout,
            "pixels, area-averaged"
            if layer.name == INPUT_LAYER
            else ("as is" if layer.name == LOGITS_LAYER else pooling(layer)),
            layer.module,
        )
        for layer in features.layers
    ]
    result = AuditResult(
        tool_version=__version__,
        generated_at=timestamp(epoch),
        options=cfg.recorded(),
        model=ModelSummary(
            path=str(cfg.model),
            format=meta["format"],
            sha256=model_sha,
            input_size=tuple(pre.size),
            channels=pre.channels,
            runtime=meta["runtime"],
            device=meta["device"],
            output_kind=output_kind,
            num_outputs=meta["num_outputs"],
            properties=meta["properties"],
        ),
        dataset=DatasetSummary(
            root=str(cfg.images),
            root_resolved=str(cfg.images.resolve()),
            labeled=dataset.labeled,
            n_images=features.n,
            n_candidates=len(dataset.records) + len(dataset.skipped),
            folder_classes=folder_names,
            sha256=dataset_sha256(features.files, features.sha256),
        ),
        classes=class_map.classes,
        class_source=class_map.source,
        preprocessing=pre.fingerprint(),
        layers=layers,
        predictions=predictions,
        metrics=metrics,
        balance=balance,
        skipped=skipped,
        warnings=warnings,
        timings=None,
        throughput=None,
        # Whether this run extracted or reused features is run metadata, like timings.
        features_from_cache=features.from_cache if epoch is None else None,
    )
    reference = None
    if cfg.reference is not None:
        with clock("reference"):
            reference = reference_features(cfg, handle, pre, features.layers, model_sha)
    odds, score_source = class_scores(features, probs, output_kind)
    unusable = unusable_layers(features, *([reference[0]] if reference is not None else []))
    inputs = SectionInputs(
        cfg, result, features, probs, odds, score_source, truth, pred, class_map, dataset, pre, handle, clock, unusable
    )
    by_layer = layers_section.build(inputs, reference)
    pictured = galleries_section.build(inputs)
    units = None
    if cfg.units > 0:
        with clock("units"):
            units = units_section.build(inputs)
    result.layers = by_layer.summaries
    result.warnings.extend(by_layer.warnings)
    result.sections = Sections(
        reference=by_layer.reference,
        knn=by_layer.knn,
        suspects=by_layer.suspects,
        tsne=by_layer.tsne,
        explorer=by_layer.explorer,
        galleries=pictured.galleries,
        shortcuts=pictured.shortcuts,
        channels=pictured.channels,
        units=units,
    )
    with clock("figures"):
        figures = build_figures(result, dataset.root, cfg.reference, clock.bar)
    if epoch is None:
        result.timings = {k: round(v, 3) for k, v in clock.seconds.items()}
        if not features.from_cache and features.seconds > 0:
            result.throughput = {"extraction_images_per_s": features.n / features.seconds}
    return result, figures


def class_scores(features: Features, probs: np.ndarray, output_kind: str) -> tuple[np.ndarray, str]:
    """Log-odds of every class for ranking images, and which scores the maps explain.

    ``logits``: the model outputs logits; ``logits before softmax``: its output is a
    softmax and the logits were tapped before it; ``probabilities``: it outputs
    probabilities and no softmax was found to cut before (ranks then tie where p = 1).
    """
    if features.logits is not None:
        return log_odds(features.logits), "logits before softmax"
    if output_kind == "logits":
        return log_odds(features.outputs), "logits"
    return log_odds_from_probabilities(probs), "probabilities"


def reference_features(
    cfg: AuditConfig, handle: ModelHandle, pre: Preprocess, layers: list[LayerInfo], model_sha: str
) -> tuple[Features, list[str]]:
    """Features of the ``--reference`` folder, with the same model, layers and cache rules."""
    assert cfg.reference is not None
    ref = discover(cfg.reference, follow_links=cfg.follow_links, max_bytes=cfg.max_image_bytes)
    if not ref.labeled:
        raise UserError(f"--reference {cfg.reference} must be a labeled folder (one sub-folder per class)")
    options = {**cfg.extraction_options(), "layers": [layer.name for layer in layers], "role": "reference"}
    key = cache_key(model_sha, options, ref)
    path = reference_cache_path(cfg)
    cached = _usable_cache(path, key, cfg, [])
    if cached is not None:
        return drop_nonfinite(cached.features)[0], ref.folder_classes
    adapter = handle.prepared(pre.size)
    features = _extract_to(
        path, "the reference features cache", cfg, ref, adapter, layers, pre, key, _model_meta(adapter, pre)
    )
    return drop_nonfinite(features)[0], ref.folder_classes
