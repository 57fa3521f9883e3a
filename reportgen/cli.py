"""The command line: ``reportgen audit | demo | layers | cam | compare | visualize``.

User errors print one line (``reportgen: error: ...``) and exit with status 2; a failed
quality gate exits with 3 after the report is written; an unexpected failure prints one
line and exits with 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from reportgen import __version__, interrupts, outputs
from reportgen.config import AuditConfig
from reportgen.errors import GateFailed, UserError, one_line, printable
from reportgen.options import (
    ARCH,
    AUDIT_GROUPS,
    BATCH_SIZE,
    CAM,
    DEVICE,
    LABELS,
    MODEL_OPTIONS,
    QUIET,
    SEED,
    SIZE,
    TRUST_PICKLE,
    Option,
    parse_gates,
)

EXIT_USER_ERROR = 2
EXIT_GATE_FAILED = 3
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line with our prefix and exit status."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see {self.prog} --help)")


def _add(parser: argparse.ArgumentParser, options: list[Option], title: str | None = None) -> None:
    target = parser.add_argument_group(title) if title else parser
    for option in options:
        option.add_to(target)


def _audit_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "audit",
        help="audit a model on an image folder: report.html + report.json",
        description="Run MODEL over every image under IMAGES and write a self-contained HTML report plus a JSON sidecar.",
    )
    p.add_argument(
        "model", type=Path, metavar="MODEL", help="ONNX, TorchScript, torch.export (.pt2) or state_dict file"
    )
    p.add_argument(
        "images",
        type=Path,
        metavar="IMAGES",
        help="folder with one sub-folder per class, a flat folder of images, or a manifest (.csv, .tsv, .jsonl, "
        ".parquet) with a path column, a label column and metadata columns",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("report.html"),
        metavar="HTML",
        help="report path; the JSON goes beside it with the same stem (default: report.html)",
    )
    for title, options in AUDIT_GROUPS:
        _add(p, options, title)
    p.set_defaults(func=_cmd_audit)
    return p


def _config_from(args: argparse.Namespace) -> AuditConfig:
    """The audit's configuration: every option's destination is an ``AuditConfig`` field."""
    given = {f.name: getattr(args, f.name) for f in fields(AuditConfig) if hasattr(args, f.name)}
    return AuditConfig(**given, decode_processes=True)


def run_audit(cfg: AuditConfig) -> int:
    """Audit, write the report, then apply the gates."""
    from reportgen.pipeline import audit
    from reportgen.progress import note
    from reportgen.render import write_report

    result, figures = audit(cfg)
    write_report(result, figures, cfg.output, cfg.json_path)
    note(f"wrote {cfg.output} and {cfg.json_path}", not cfg.quiet)
    failures = []
    summary = result.content("summary")
    metrics, multi = summary.metrics, summary.multilabel
    values = {
        "accuracy": metrics.accuracy if metrics else None,
        "top5_accuracy": metrics.top5_accuracy if metrics else None,
        "balanced_accuracy": metrics.balanced_accuracy if metrics else None,
        "macro_f1": metrics.macro_f1 if metrics else (multi.macro_f1 if multi else None),
        "mean_average_precision": multi.mean_average_precision if multi else None,
        "micro_f1": multi.micro_f1 if multi else None,
    }
    for name, threshold in cfg.fail_under.items():
        value = values[name]
        if value is None:
            failures.append(f"{name} is not available (no labeled images matched the model's classes)")
        elif value < threshold:
            failures.append(f"{name} {value:.4f} < {threshold}")
    if failures:
        raise GateFailed("; ".join(failures))
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    return run_audit(_config_from(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    from reportgen.resources import sample_dir

    sample = sample_dir()
    out_dir: Path = args.output
    cfg = AuditConfig(
        model=sample / "model.onnx",
        images=sample / "images",
        output=out_dir / "report.html",
        seed=0,
        units=6,
        quiet=args.quiet,
        device=args.device,
    )
    return run_audit(cfg)


def _cmd_layers(args: argparse.Namespace) -> int:
    from reportgen.data import input_size
    from reportgen.models import (
        INPUT_LAYER,
        LOGITS_LAYER,
        POOL_VALUES,
        default_cam_layer,
        default_layers,
        graph_gap,
        load_model,
        pool_cells,
    )

    adapter = load_model(args.model, device=args.device, arch=args.arch, trust_pickle=args.trust_pickle)
    info = adapter.info
    size = input_size(info, args.size)
    adapter.prepare(size)
    layers = adapter.layers()
    chosen = set(default_layers(layers, adapter.num_outputs))
    cam = default_cam_layer(adapter)
    print(f"# {printable(str(args.model))} ({info.format}), input {size[0]}x{size[1]}, {adapter.num_outputs} outputs")
    print(
        "# * audited by default   c Grad-CAM's default target   ? axes not recognised (attention internals)   "
        "~ axes followed, neither map, tokens nor vector (tokens transposed for a pooling)"
    )
    gap = graph_gap(layers)
    if gap:
        print(f"# warning: {printable(gap)}")
    print("# --layers, --cam-layer and --layer take a module path (the module's output) or a tensor name")
    print(f"# [AxB]: the grid of means a spatial layer keeps for kNN and t-SNE (--pool-values {POOL_VALUES})")
    rows = [("* ", "", INPUT_LAYER, "", "pixels, downsampled")]
    for layer in layers:
        mark = ("*" if layer.name in chosen else " ") + (
            "c" if layer.name == cam else ("~" if layer.followed else "?" if not layer.layout else " ")
        )
        cells = pool_cells(layer)
        grid = f" [{cells[0]}x{cells[1]}]" if cells else ""
        rows.append((mark, layer.module, layer.name, layer.op, layer.describe() + grid))
    rows.append(("* ", "", LOGITS_LAYER, "output", str(adapter.num_outputs)))
    with_modules = any(layer.module for layer in layers)
    header = ("  ", "module", "tensor", "op", "shape")
    # Columns as wide as their longest entry (names and ops come from the model file).
    table = [tuple(printable(c) for c in r) for r in ([header] if with_modules else []) + rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for mark, module, name, op, what in table:
        first = f"{module or '-':<{widths[1]}}  " if with_modules else ""
        print(f"{mark} {first}{name:<{widths[2]}}  {op:<{widths[3]}}  {what}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="reportgen",
        description="Audit an image classifier: one self-contained HTML report (plus JSON) of what it learned and where the data misleads it.",
    )
    parser.add_argument("--version", action="version", version=f"reportgen {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _audit_parser(sub)

    p = sub.add_parser(
        "demo",
        help="build the report of the shipped sample",
        description="Audit the shipped sample model on the shipped sample images.",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("reportgen-demo"),
        metavar="DIR",
        help="output folder (default: reportgen-demo)",
    )
    _add(p, [DEVICE, QUIET])
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "layers",
        help="list a model's tensors that can be audited",
        description="List the tensors of MODEL that --layers and --cam-layer accept, with their shapes.",
    )
    p.add_argument("model", type=Path, metavar="MODEL")
    _add(p, [SIZE, ARCH, TRUST_PICKLE, DEVICE])
    p.set_defaults(func=_cmd_layers)

    from reportgen.compare import COMPARE_GATES, MAX_IMAGES

    p = sub.add_parser(
        "compare",
        help="what changed between two audits of the same images: diff.html + diff.json",
        description="Compare two audits (their JSON sidecars or HTML reports) of the same image folder: accuracy with bootstrap intervals, per-class deltas, prediction flips, confusion difference, representation similarity, folder changes.",
    )
    p.add_argument("old", type=Path, metavar="OLD", help="the earlier audit's report.json (or report.html)")
    p.add_argument("new", type=Path, metavar="NEW", help="the later audit's report.json (or report.html)")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("diff.html"),
        metavar="HTML",
        help="default: diff.html (the JSON goes beside it)",
    )
    p.add_argument(
        "--fail-on",
        type=lambda text: parse_gates(text, "--fail-on", COMPARE_GATES),
        default={},
        metavar="NAME=V,...",
        help=f"exit with status 3 after writing the report when a measure exceeds V ({', '.join(COMPARE_GATES)}); drops are fractions, e.g. accuracy_drop=0.01",
    )
    p.add_argument(
        "--old-model",
        type=Path,
        metavar="MODEL",
        help="the old audit's model file, for the flips' Grad-CAM maps (must be the file it ran: same SHA-256)",
    )
    p.add_argument("--new-model", type=Path, metavar="MODEL", help="the new audit's model file, likewise")
    p.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="the image folder the pictures of the flips are read from (default: the new audit's folder)",
    )
    p.add_argument("--no-cam", action="store_true", help="no Grad-CAM maps of the flips")
    p.add_argument(
        "--max-images",
        type=int,
        default=MAX_IMAGES,
        metavar="N",
        help=f"refuse an audit JSON (or its predictions CSV) of more than N images (default: {MAX_IMAGES:,})",
    )
    _add(p, [SEED.but(help="bootstrap seed (default: 0)"), TRUST_PICKLE, DEVICE, BATCH_SIZE, QUIET])
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "visualize",
        help="synthesise the input one unit (a channel or a class) responds to most",
        description="Activation maximisation under natural-image priors: OUT.png is the synthesised input at the model's input size.",
    )
    p.add_argument("model", type=Path, metavar="MODEL")
    p.add_argument("--layer", metavar="NAME", help="layer of the channel (see `reportgen layers MODEL`)")
    p.add_argument("--channel", type=int, metavar="K", help="channel index in --layer")
    p.add_argument("--target", metavar="CLASS", help="class name or output index (instead of --layer/--channel)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.png")
    p.add_argument("--steps", type=int, default=200, help="optimisation steps (default: 200)")
    _add(p, [SEED, LABELS])
    _add(p, MODEL_OPTIONS, "model and preprocessing")
    p.set_defaults(func=_cmd_visualize)

    p = sub.add_parser(
        "cam",
        help="the activation map of one image (Grad-CAM, Ablation-CAM or Score-CAM)",
        description="Explain one prediction: OUT.npy gets the map (HxW float32 in [0, 1] at the model's input resolution), OUT.png the overlay.",
    )
    p.add_argument("model", type=Path, metavar="MODEL")
    p.add_argument("image", type=Path, metavar="IMAGE")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="a .npy or .png file")
    p.add_argument(
        "--layer", metavar="NAME", help="module or tensor to explain (default: as audit's --cam-layer default)"
    )
    p.add_argument("--target", metavar="CLASS", help="class name or output index (default: the predicted class)")
    _add(p, [CAM, LABELS])
    _add(p, MODEL_OPTIONS, "model and preprocessing")
    p.set_defaults(func=_cmd_cam)
    return parser


def _cmd_compare(args: argparse.Namespace) -> int:
    from reportgen.compare import add_cam_overlays, compare, compare_json, evaluate_gates, load_audit
    from reportgen.progress import note
    from reportgen.render import write_compare

    if args.max_images < 1:
        raise UserError("--max-images must be at least 1")
    old, new = load_audit(args.old, max_images=args.max_images), load_audit(args.new, max_images=args.max_images)
    if args.images is not None and not args.images.is_dir():
        raise UserError(f"--images {args.images}: not a folder")
    for option, model in (("--old-model", args.old_model), ("--new-model", args.new_model)):
        if model is not None and not model.is_file():
            raise UserError(f"{option} {model}: model file not found")
    result = compare(old, new, seed=args.seed, images=args.images)
    json_path = args.output.with_suffix(".json")
    _check_compare_outputs(args, json_path, result)
    if not args.no_cam:
        try:
            add_cam_overlays(
                result,
                (args.old_model, args.new_model),
                device=args.device,
                trust_pickle=args.trust_pickle,
                batch_size=args.batch_size,
                show_progress=not args.quiet,
            )
        except UserError as exc:
            result.cam_note = f"no activation maps: {exc}"
    for said in (result.cam_note, result.pictures_note):
        if said and not args.no_cam:
            # Also in the page; said here because it usually means a wrong file was given.
            print(f"reportgen: note: {printable(said)}", file=sys.stderr)
    gates, failures = evaluate_gates(result, args.fail_on)
    payload = compare_json(result, gates)
    write_compare(result, payload, args.output, json_path)
    note(f"wrote {args.output} and {json_path}", not args.quiet)
    if failures:
        raise GateFailed("; ".join(failures))
    return 0


def _check_compare_outputs(args: argparse.Namespace, json_path: Path, result: Any) -> None:
    """diff.html and diff.json: apart from everything compare reads, and free or its own."""
    from reportgen.report import report_outputs

    if json_path.resolve() == args.output.resolve():
        raise UserError(f"-o {args.output}: the JSON would be the report itself; give the report an .html name")
    inputs: list[tuple[Path, str]] = []
    for side, audit in (("old", result.old), ("new", result.new)):
        inputs.append((audit.json_path, f"the {side} audit's JSON"))
        if audit.csv_path is not None:
            inputs.append((audit.csv_path, f"the {side} audit's predictions file"))
    for option, model in (("--old-model", args.old_model), ("--new-model", args.new_model)):
        if model is not None:
            inputs.append((model, f"the {option} file"))
    folders = [(result.image_root, "the image folder")] if result.image_root.is_dir() else []
    folders += [(a.cache, "an audit's features cache") for a in (result.old, result.new) if a.cache is not None]
    _, json_target, html_target = report_outputs(args.output, json_path)
    outputs.check_apart([(json_path, json_target[2]), (args.output, html_target[2])], inputs, folders)
    for path, proof, what in (json_target, html_target):
        outputs.check_replaceable(path, proof, what)


def _cmd_visualize(args: argparse.Namespace) -> int:
    import numpy as np

    from reportgen.analyses.visualize import Prior, synthesize, unit_evaluator
    from reportgen.data import resolve_preprocess
    from reportgen.explain import resolve_target
    from reportgen.labels import read_labels_file
    from reportgen.models import LOGITS_LAYER, load_model, missing_layer_message
    from reportgen.pictures import picture_png

    if (args.channel is None) == (args.target is None):
        raise UserError("give either --layer NAME --channel K, or --target CLASS")
    if args.channel is not None and not args.layer:
        raise UserError("--channel needs --layer NAME (see `reportgen layers MODEL`)")
    if args.output.suffix.lower() != ".png":
        raise UserError(f"-o must end in .png, got {args.output.name!r}")
    cfg = AuditConfig(
        model=args.model,
        images=Path("."),
        size=args.size,
        mean=args.mean,
        std=args.std,
        arch=args.arch,
        trust_pickle=args.trust_pickle,
        device=args.device,
        labels=args.labels,
    )
    adapter = load_model(cfg.model, device=cfg.device, arch=cfg.arch, trust_pickle=cfg.trust_pickle)
    pre = resolve_preprocess(adapter.info, size=cfg.size, mean=cfg.mean, std=cfg.std, resize=cfg.resize)
    adapter.prepare(pre.size)
    if args.target is not None:
        names = read_labels_file(cfg.labels) if cfg.labels else adapter.info.embedded.classes
        unit = resolve_target(args.target, names, adapter.num_outputs)
        layer = LOGITS_LAYER
        label = f"class {names[unit] if names else unit}"
    else:
        layer = adapter.resolve(args.layer)
        info = {layer.name: layer for layer in adapter.layers()}.get(layer)
        if info is None:
            raise UserError(missing_layer_message(args.layer, adapter.layers()))
        if not 0 <= args.channel < info.shape[0]:
            raise UserError(f"--channel {args.channel} is out of range: {layer} has {info.shape[0]} channels")
        unit = args.channel
        label = f"channel {unit} of {layer}"
    model = adapter.differentiable()
    synth = synthesize(
        model,
        layer,
        np.array([unit]),
        pre.size,
        pre.channels,
        pre.mean,
        pre.std,
        channels_last=pre.channels_last,
        prior=Prior(steps=args.steps),
        seed=args.seed,
        evaluate=unit_evaluator(adapter, layer),
    )
    outputs.write_file(
        args.output, outputs.tag_png(picture_png(synth.images[0], side=None)), outputs.is_reportgen_png, "-o"
    )
    runs = int(synth.runs[0])
    print(
        f"reportgen: {label}: {synth.values[0]:.4g} on the synthesised input ({args.steps} steps, seed {args.seed}"
        f"{f', {runs} runs' if runs > 1 else ''}) -> {args.output}",
        file=sys.stderr,
    )
    if not synth.responded[0]:
        what = "made the class win" if layer == LOGITS_LAYER else "raised the unit above its starting image"
        print(f"reportgen: note: the unit did not respond: no run {what}", file=sys.stderr)
    return 0


def _cmd_cam(args: argparse.Namespace) -> int:
    from reportgen.explain import explain_image, write_explanation

    if not args.image.is_file():
        raise UserError(f"image not found: {args.image}")
    cfg = AuditConfig(
        model=args.model,
        images=args.image.parent,
        size=args.size,
        mean=args.mean,
        std=args.std,
        resize=args.resize,
        arch=args.arch,
        trust_pickle=args.trust_pickle,
        device=args.device,
        batch_size=args.batch_size,
        labels=args.labels,
    )
    exp, _ = explain_image(cfg, args.image, layer=args.layer, target=args.target, method=args.cam)
    write_explanation(exp, args.image, args.output)
    score = "logit" if exp.score_kind == "logit" else "output value"
    print(
        f"reportgen: {exp.method} of class {printable(exp.target_name)} (output index {exp.target}, "
        f"{score} {exp.score:.4g}) at {printable(exp.layer)} -> {printable(str(args.output))}",
        file=sys.stderr,
    )
    if not exp.map.any():
        print(
            f"reportgen: note: the map is zero everywhere: nothing at {exp.layer} raises the {exp.score_kind} of "
            f"class {exp.target_name} for this image",
            file=sys.stderr,
        )
    return 0


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    print(f"reportgen: warning: {printable(one_line(Warning(message)))} ({category.__name__})", file=sys.stderr)


def _show_warning_in_full(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reportgen`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted before or after the command: the internal-error line tells
    # people to add it, and they add it at the end.
    debug = "--debug" in argv
    if debug:
        argv = ["--debug", *(a for a in argv if a != "--debug")]
    outputs.forget_written()
    with warnings.catch_warnings():
        if debug:
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning_in_full
        else:
            # Announcements of the libraries' future API changes are for this tool's
            # developers (--debug shows them); anything else may concern the results and
            # is shown, once per place, on one line.
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.simplefilter("ignore", category)
            warnings.showwarning = _show_warning
        with interrupts.sticky_interrupts():
            return _run(argv, debug)


def entry(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``reportgen`` and ``python -m reportgen``): exit with main()'s status.

    An interrupt that lands while CPython runs code through ``PyRun_String`` (some extension
    modules' first import does: the t-SNE stage's first import of scipy.stats was caught so
    in CI) sets CPython's "unhandled KeyboardInterrupt" flag although main() handled it,
    and the interpreter then kills itself with SIGINT at exit instead of returning 130.
    Nothing is left to finalise on that path (scratch files go in ``finally`` blocks), so
    it flushes and leaves with the documented status at once.
    """
    try:
        code = main(argv)
    except KeyboardInterrupt:  # in the instant between main's own handler and here
        print(f"reportgen: {interrupted_message()}", file=sys.stderr)
        code = EXIT_INTERRUPTED
    if threading.current_thread() is threading.main_thread():
        # The run is over and its outcome said: a late Ctrl-C must not become a
        # traceback from the interpreter's shutdown.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if code == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _run(argv: list[str], debug: bool) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
            return EXIT_USER_ERROR
        return int(args.func(args))
    except UserError as exc:
        print(f"reportgen: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except GateFailed as exc:
        print(f"reportgen: gate failed: {printable(str(exc))}", file=sys.stderr)
        return EXIT_GATE_FAILED
    except KeyboardInterrupt:
        print(f"reportgen: {interrupted_message()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into a closed reader (e.g. `| head`): not an error worth a message.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except MemoryError:
        print("reportgen: error: out of memory; try a smaller --batch-size", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as exc:
        if debug:
            raise
        print(
            f"reportgen: internal error: {type(exc).__name__}: {printable(one_line(exc, 300))} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def interrupted_message() -> str:
    """What an interrupted run leaves, truly: nothing, or the files it finished writing
    (a report and its JSON are replaced together or not at all)."""
    done = outputs.written()
    if not done:
        return "interrupted; no report was written or replaced"
    return f"interrupted after writing {', '.join(printable(str(p)) for p in done)}"
