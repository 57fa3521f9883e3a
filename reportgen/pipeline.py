"""``audit``: the whole run, top to bottom, in the order of the report's sections."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from reportgen import __version__, ray_engine
from reportgen.analyses.metrics import (
    class_balance,
    classification_metrics,
    log_odds,
    log_odds_from_probabilities,
    to_probabilities,
)
from reportgen.analyses.multilabel import independent_probabilities, multilabel_metrics
from reportgen.analyses.screen import nonfinite_rows, unusable_reason
from reportgen.clock import Clock
from reportgen.config import AuditConfig, source_date_epoch, timestamp
from reportgen.data import ImageDataset, Preprocess, Skipped, discover, resolve_preprocess
from reportgen.errors import UserError, printable
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
from reportgen.hf_dataset import is_dataset_folder, is_saved_dataset, materialise
from reportgen.labels import ClassMap, label_matrix, read_labels_file, read_thresholds, resolve_classes
from reportgen.manifest import (
    attach_metadata,
    folder_metadata,
    is_manifest,
    labels_file_table,
    listing_from_table,
    metadata_path_column,
    read_table,
)
from reportgen.models import LayerInfo, ModelAdapter, ModelHandle, graph_gap, hub_hints, resolve_layers
from reportgen.outputs import check_apart, check_replaceable
from reportgen.pictures import build_figures
from reportgen.progress import note
from reportgen.report import AuditResult, Built, DatasetSummary, Figures, ModelSummary, report_outputs
from reportgen.sections.base import MultiLabelRun, Shared
from reportgen.sections.neighbours import embedding
from reportgen.sections.order import REPORT
from reportgen.util import file_sha256


def check_outputs(cfg: AuditConfig, dataset: ImageDataset | None = None) -> None:
    """Before any work: every path the audit will write is apart from its inputs and
    free or provably reportgen's (see ``outputs``), so a refusal costs nothing."""
    report = report_outputs(cfg.output, cfg.json_path)
    caches = [(cfg.cache_path, "--features")] if cfg.use_cache else []
    if cfg.use_cache and cfg.reference is not None:
        caches.append((reference_cache_path(cfg), "the reference features cache"))
    files = [(cfg.model, "the model file")] + ([(cfg.labels, "the --labels file")] if cfg.labels else [])
    files += [(cfg.thresholds, "the --thresholds file")] if cfg.thresholds else []
    if dataset is not None and dataset.source is not None:
        what = "the --labels-file" if dataset.source == cfg.labels_file else f"the metadata file {dataset.source.name}"
        files.append((dataset.source, "the manifest" if dataset.source == cfg.images else what))
    # A manifest's images are under its folder (those it lists outside, with --follow-links,
    # are still never replaced: nothing is without proof that reportgen wrote it).
    image_folder = cfg.images.parent if dataset is not None and dataset.source == cfg.images else cfg.images
    check_apart(
        [(path, what) for path, _, what in report] + caches,
        files=files,
        folders=[(image_folder, "the image folder")]
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


def extraction_options(cfg: AuditConfig) -> dict:
    """The options that change extracted features, and the hub files beside the model
    (they can change its preprocessing and sit outside the model file's hash)."""
    options = cfg.extraction_options()
    digest = hub_hints(cfg.model).digest
    if digest:
        options["hub_files"] = digest
    return options


def dataset_sha256(files: list[str], digests: list[str], source_sha256: str | None = None) -> str:
    """SHA-256 over the sorted (path, content hash) pairs of the audited images, and the
    digest of the manifest that labels them, when one does."""
    h = hashlib.sha256()
    for f, d in sorted(zip(files, digests, strict=True)):
        h.update(f"{f}\0{d}\n".encode())
    if source_sha256 is not None:
        h.update(f"manifest\0{source_sha256}\n".encode())
    return h.hexdigest()


def find_images(cfg: AuditConfig) -> tuple[ImageDataset, list[str]]:
    """The images to audit and what their listing got wrong: a folder (class sub-folders
    or flat), a flat folder with ``--labels-file``, or a manifest file."""
    if is_saved_dataset(cfg.images):
        return _saved_dataset(cfg)
    if cfg.split is not None:
        raise UserError("--split chooses a split of a saved Hugging Face dataset; IMAGES is not one")
    if is_manifest(cfg.images):
        if cfg.labels_file is not None:
            raise UserError("--labels-file labels a folder of images; a manifest holds its own labels")
        table = read_table(cfg.images)
        listing = listing_from_table(
            table, cfg.images.parent, path_column=cfg.path_column, label_column=cfg.label_column,
            follow_links=cfg.follow_links, max_bytes=cfg.max_image_bytes, source=cfg.images,
            multi_label=cfg.multi_label, separator=cfg.label_separator,
        )  # fmt: skip
        return _usable(listing.dataset, cfg.images), listing.warnings
    if cfg.labels_file is not None and not cfg.images.is_dir():
        raise UserError(f"--labels-file labels a folder of images; {cfg.images} is not a folder")
    metadata = folder_metadata(cfg.images) if cfg.images.is_dir() and cfg.labels_file is None else None
    notes: list[str] = []
    table = None
    if metadata is not None:
        table = read_table(metadata)
        if metadata_path_column(table, cfg.path_column) is None:
            # Somebody's own metadata.csv, not Hugging Face's: the folder is read as before.
            notes.append(f"{metadata.name} has no file_name column, so it is not read as the images' metadata")
            metadata = table = None
    labels_file = cfg.labels_file or metadata
    if (cfg.path_column or cfg.label_column) and labels_file is None:
        raise UserError("--path-column and --label-column name the columns of a manifest or --labels-file")
    folder = discover(cfg.images, follow_links=cfg.follow_links, max_bytes=cfg.max_image_bytes)
    if labels_file is None:
        return (_one_label_sets(folder) if cfg.multi_label else folder), notes
    if folder.labeled and metadata is not None and table is not None:
        # A Hugging Face imagefolder: class folders label the images and the metadata file
        # adds columns; in a flat folder, the metadata file is the labels file.
        notes = attach_metadata(folder, table, metadata, path_column=cfg.path_column)
        return (_one_label_sets(folder) if cfg.multi_label else folder), notes
    if folder.labeled:
        raise UserError(
            f"{cfg.images} has class sub-folders, which label its images already; --labels-file is for a flat folder"
        )
    option = "--labels-file" if cfg.labels_file else labels_file.name
    if table is None:
        table = labels_file_table(labels_file, cfg.images)
    listing = listing_from_table(
        table, cfg.images, path_column=cfg.path_column or ("file_name" if metadata else None),
        label_column=cfg.label_column, follow_links=cfg.follow_links, max_bytes=cfg.max_image_bytes,
        source=labels_file, option=option, multi_label=cfg.multi_label, separator=cfg.label_separator,
    )  # fmt: skip
    listed = {r.file for r in listing.dataset.records} | {s.file for s in listing.dataset.skipped}
    unlisted = [r.file for r in folder.records if r.file not in listed]
    if unlisted:
        listing.warnings.append(
            f"{len(unlisted):,} image(s) of the folder are not in {option} and are not audited (e.g. {unlisted[0]})"
        )
    return _usable(listing.dataset, labels_file), listing.warnings


def _saved_dataset(cfg: AuditConfig) -> tuple[ImageDataset, list[str]]:
    """A saved Hugging Face dataset: its pictures written out (see ``hf_dataset``), then
    read as the manifest written beside them."""
    if cfg.labels_file is not None:
        raise UserError("--labels-file labels a folder of images; a saved dataset holds its own labels")
    check_apart(
        [(cfg.dataset_path, "the dataset's pictures folder")],
        files=[(cfg.model, "the model file")],
        folders=[(cfg.images, "the saved dataset")],
    )
    check_replaceable(cfg.dataset_path, is_dataset_folder, "the dataset's pictures folder", folder=True)
    manifest, skipped, notes = materialise(
        cfg.images, cfg.split, cfg.dataset_path, label_column=cfg.label_column, max_bytes=cfg.max_image_bytes
    )
    table = read_table(manifest)
    if not table.rows:
        raise UserError(f"no usable picture in {printable(str(cfg.images))}: {len(skipped):,} rows, every one skipped")
    listing = listing_from_table(
        table, manifest.parent, path_column="path", label_column="label" if "label" in table.columns else None,
        follow_links=cfg.follow_links, max_bytes=cfg.max_image_bytes, source=manifest, option="the saved dataset",
        multi_label=cfg.multi_label, separator=cfg.label_separator,
    )  # fmt: skip
    listing.dataset.skipped = sorted(listing.dataset.skipped + skipped, key=lambda s: s.file)
    return _usable(listing.dataset, cfg.images), notes + listing.warnings


def _one_label_sets(dataset: ImageDataset) -> ImageDataset:
    """A folder read with ``--multi-label``: each image's set is its class folder (a
    multi-label model audited on single-label data), an unlabeled folder's unknown."""
    dataset.label_sets = {r.file: (r.folder_class,) for r in dataset.records if r.folder_class >= 0}
    dataset.records = [replace(r, folder_class=-1) for r in dataset.records]
    dataset.multi_label, dataset.labeled = True, False
    return dataset


def _usable(dataset: ImageDataset, source: Path) -> ImageDataset:
    """``dataset``, or a one-line error when every image it lists was refused."""
    if not dataset.records:
        first = dataset.skipped[0]
        raise UserError(
            f"no usable image in {printable(str(source))}: {len(dataset.skipped):,} listed, every one skipped "
            f"(e.g. {printable(first.file)}: {first.reason})"
        )
    return dataset


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
        "embedded_classes_from": info.embedded.classes_from,
        "score_activation": adapter.score_activation,
        "preprocess": pre.fingerprint(),
        "notes": [*adapter.notes, *info.notes, *([gap] if (gap := graph_gap(adapter.layers())) else [])],
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
    key = cache_key(model_sha, extraction_options(cfg), dataset)
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
        features = _extract_to(cfg.cache_path, "--features", cfg, dataset, handle, model_sha, layers, pre, key, meta)
    return features, meta, pre


def _extract_to(
    cache: Path,
    what: str,
    cfg: AuditConfig,
    dataset: ImageDataset,
    handle: ModelHandle,
    model_sha: str,
    layers: list[LayerInfo],
    pre: Preprocess,
    key: dict,
    meta: dict,
) -> Features:
    """Extract into a scratch directory beside ``cache``, which then becomes the cache
    (``what`` names it in messages); without a cache, or with no image left, the scratch
    directory goes at once (the arrays stay mapped for this run).  Whatever stops it,
    no scratch directory is left behind.  With ``--engine ray`` the shards are kept
    beside the cache until it is complete (a rerun reuses them), or without a cache in a
    scratch directory of their own."""
    folder = scratch_folder(cache)
    shards = None
    try:
        if cfg.engine == "ray":
            shards = ray_engine.shards_folder(cache) if cfg.use_cache else scratch_folder(cache) / "shards"
            features = ray_engine.extract_on_ray(
                dataset,
                handle.path,
                handle.options,
                model_sha,
                layers,
                pre,
                folder,
                shards,
                key,
                batch_size=cfg.batch_size,
                precision=cfg.feature_precision,
                address=cfg.ray_address,
                workers=cfg.ray_workers,
                shard_images=cfg.shard_images,
                show_progress=not cfg.quiet,
                what=what,
            )
        else:
            features = extract(
                dataset,
                handle.prepared(pre.size),
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
        if shards is not None:
            ray_engine.remove_shards_folder(shards)
            if not cfg.use_cache:
                discard(shards.parent)
        return features
    except BaseException:
        discard(folder)
        if shards is not None and not cfg.use_cache:
            discard(shards.parent)
        raise


def audit(cfg: AuditConfig) -> tuple[AuditResult, Figures]:
    """Run a whole audit and return its result and pictures (nothing is written here):
    the model over the images once, then every section of ``sections.order.REPORT`` in
    reading order, then their pictures."""
    clock = Clock(show=not cfg.quiet)
    epoch = source_date_epoch()
    if not cfg.model.is_file():
        raise UserError(f"model file not found: {cfg.model}")
    with clock("discover"):
        dataset, listing_notes = find_images(cfg)
    if not dataset.multi_label and (cfg.thresholds is not None or cfg.threshold != AuditConfig.threshold):
        raise UserError(
            "--threshold and --thresholds are for a multi-label run (--multi-label, or label cells holding lists)"
        )
    if cfg.group_by is not None and cfg.group_by not in dataset.metadata_columns:
        columns = ", ".join(printable(c) for c in dataset.metadata_columns[:20]) or "none: a folder has no metadata"
        raise UserError(f"--group-by {printable(cfg.group_by)!r} is not a metadata column (the manifest's: {columns})")
    check_outputs(cfg, dataset)
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
        dataset.folder_classes,
        meta["num_outputs"],
        labels=labels,
        embedded=meta.get("embedded_classes"),
        embedded_from=meta.get("embedded_classes_from", "model metadata"),
        indices=dataset.label_indices,
        noun="class folder" if dataset.source is None else "label",
    )
    if dataset.label_indices:
        # Labels given as output indices read as the classes they name from here on.
        dataset.folder_classes = [
            class_map.classes[o] if o >= 0 else name
            for name, o in zip(dataset.folder_classes, class_map.folder_to_output, strict=True)
        ]
    multilabel = None
    with clock("metrics"):
        if dataset.multi_label:
            probs, output_kind, kind_notes = independent_probabilities(features.outputs, meta.get("score_activation"))
            notes.extend(kind_notes)
            multilabel = multi_label_run(cfg, dataset, features, class_map, probs, notes)
        else:
            if meta.get("score_activation") == "sigmoid":
                # One class per image from a sigmoid-ended model: its outputs are read as
                # any other scores (softmax over them), so calibration and galleries rank
                # the same values; the tap before the sigmoid serves multi-label runs.
                features.logits = None
            probs, output_kind = to_probabilities(features.outputs)
        truth = class_map.truth(features.labels)
        pred = probs.argmax(axis=1)
        metrics = classification_metrics(truth, probs, class_map.classes)
        balance = class_balance(truth, pred, class_map.classes)
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
            # The folder the audited paths are relative to (a manifest's own folder; links
            # resolved): where compare finds the pictures, whatever the input kind.
            root_resolved=str(Path(dataset.root).resolve()),
            labeled=dataset.labeled,
            n_images=features.n,
            n_candidates=len(dataset.records) + len(dataset.skipped),
            folder_classes=dataset.folder_classes,
            sha256=dataset_sha256(features.files, features.sha256, dataset.source_sha256),
            source=None if dataset.source is None else str(dataset.source),
            source_sha256=dataset.source_sha256,
            metadata_columns=list(dataset.metadata_columns),
            multi_label=dataset.multi_label,
        ),
        classes=class_map.classes,
        class_source=class_map.source,
        preprocessing=pre.fingerprint(),
        warnings=[
            *listing_notes,
            *notes,
            *meta.get("notes", []),
            *class_map.warnings,
            *_folder_warnings(dataset, features),
        ],
        # Whether this run extracted or reused features is run metadata, like timings.
        features_from_cache=features.from_cache if epoch is None else None,
    )
    reference = None
    if cfg.reference is not None:
        with clock("reference"):
            reference = reference_features(cfg, handle, pre, features.layers, model_sha)
    odds, score_source = class_scores(
        features, probs, output_kind, meta.get("score_activation"), multilabel is not None
    )
    shared = Shared(
        cfg=cfg,
        result=result,
        features=features,
        probs=probs,
        log_odds=odds,
        score_source=score_source,
        truth=truth,
        pred=pred,
        class_map=class_map,
        metrics=metrics,
        balance=balance,
        skipped=skipped,
        dataset=dataset,
        pre=pre,
        handle=handle,
        clock=clock,
        reference=reference,
        unusable=unusable_layers(features, *([reference[0]] if reference is not None else [])),
        multilabel=multilabel,
    )
    if result.model.device != "cpu":
        # The sections before the t-SNE keep the accelerator busy (maps, corruptions, map
        # checks) and leave the CPU idle: the t-SNE, which needs only the features and the
        # CPU, runs beside them.  On a CPU-only run they would compete for the same cores.
        shared.ahead(embedding)
    result.sections = [Built(section, section.build(shared)) for section in REPORT]
    result.warnings.extend(shared.notes)
    with clock("figures"):
        figures = build_figures(result, dataset.root, cfg.reference, clock.bar)
    if epoch is None:
        result.timings = {k: round(v, 3) for k, v in clock.seconds.items()}
        if not features.from_cache and features.seconds > 0:
            result.throughput = {"extraction_images_per_s": features.n / features.seconds}
        result.engine = features.engine
    return result, figures


def _folder_warnings(dataset: ImageDataset, features: Features) -> list[str]:
    """What the report says first about the folder: links not followed, empty classes,
    no labels."""
    out = []
    if dataset.links_not_followed:
        out.append(
            f"{dataset.links_not_followed} symbolic link(s) lead out of the image folder and were not followed "
            "(listed under Skipped inputs; --follow-links follows them)"
        )
    # A multi-label vocabulary holds only labels some image carries; support is per label.
    empty = [] if dataset.multi_label else [
        c for i, c in enumerate(dataset.folder_classes) if not np.any(features.labels == i)
    ]  # fmt: skip
    noun = "class folder(s)" if dataset.source is None else "label(s)"
    if empty:
        out.append(f"{len(empty)} {noun} have no usable image: {', '.join(empty[:10])}")
    if dataset.multi_label:
        if not dataset.label_sets:
            out.append("no image has its labels (no label column, or every cell empty): predicted labels are shown")
    elif not dataset.labeled:
        out.append(
            "the image folder has no class sub-folders: images are unlabeled, so predicted classes are shown instead of accuracy"
            if dataset.source is None
            else "no image has a label (no label column, or every label empty): predicted classes are shown "
            "instead of accuracy"
        )
    return out


def class_scores(
    features: Features, probs: np.ndarray, output_kind: str, activation: str | None = None, multi_label: bool = False
) -> tuple[np.ndarray, str]:
    """Log-odds of every class for ranking images, and which scores the maps explain.

    ``logits``: the model outputs logits; ``logits before softmax`` (or ``sigmoid``, in a
    multi-label run): its output is a softmax (a sigmoid) and the logits were tapped before it;
    ``probabilities``: it outputs probabilities and no function was found to cut before
    (ranks then tie where p = 1).  A label's log-odds under a sigmoid are its logit
    itself; under a softmax they weigh the class against all the others.
    """
    if features.logits is not None:
        logits = features.logits.astype(np.float64)
        if activation == "sigmoid":
            return logits, "logits before sigmoid"
        return log_odds(logits), "logits before softmax"
    if output_kind == "logits":
        return (features.outputs.astype(np.float64) if multi_label else log_odds(features.outputs)), "logits"
    return log_odds_from_probabilities(probs), "probabilities"


def multi_label_run(
    cfg: AuditConfig,
    dataset: ImageDataset,
    features: Features,
    class_map: ClassMap,
    probs: np.ndarray,
    notes: list[str],
) -> MultiLabelRun:
    """The true label sets, thresholds and metrics of a multi-label audit."""
    k = len(class_map.classes)
    truth, known, unmatched = label_matrix(dataset.label_sets, features.files, class_map.folder_to_output, k)
    if unmatched:
        notes.append(f"{unmatched:,} given label(s) name no model output and are left out of the label sets")
    thresholds = np.full(k, cfg.threshold, np.float64)
    if cfg.thresholds is not None:
        thresholds, said = read_thresholds(cfg.thresholds, class_map.classes, cfg.threshold)
        notes.extend(said)
    metrics = multilabel_metrics(truth, known, probs, thresholds, class_map.classes)
    return MultiLabelRun(truth, known, thresholds, probs >= thresholds[None, :], metrics)


def reference_features(
    cfg: AuditConfig, handle: ModelHandle, pre: Preprocess, layers: list[LayerInfo], model_sha: str
) -> tuple[Features, list[str]]:
    """Features of the ``--reference`` folder, with the same model, layers and cache rules."""
    assert cfg.reference is not None
    ref = discover(cfg.reference, follow_links=cfg.follow_links, max_bytes=cfg.max_image_bytes)
    if not ref.labeled:
        raise UserError(f"--reference {cfg.reference} must be a labeled folder (one sub-folder per class)")
    options = {**extraction_options(cfg), "layers": [layer.name for layer in layers], "role": "reference"}
    key = cache_key(model_sha, options, ref)
    path = reference_cache_path(cfg)
    cached = _usable_cache(path, key, cfg, [])
    if cached is not None:
        return drop_nonfinite(cached.features)[0], ref.folder_classes
    adapter = handle.prepared(pre.size)
    features = _extract_to(
        path, "the reference features cache", cfg, ref, handle, model_sha, layers, pre, key, _model_meta(adapter, pre)
    )
    return drop_nonfinite(features)[0], ref.folder_classes
