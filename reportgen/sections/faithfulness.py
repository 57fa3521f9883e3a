"""Map faithfulness: the activation maps the report draws, checked on a stratified
sample before anyone reads them (the checks are ``analyses/faithfulness.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reportgen import figures
from reportgen.analyses import faithfulness as fa
from reportgen.analyses.cam import CAM_METHODS, CAM_NAMES, compute_cam
from reportgen.analyses.tsne import stratified_sample
from reportgen.errors import UserError, one_line
from reportgen.map_model import MapModel
from reportgen.models import SplitModel
from reportgen.report import PictureRequest, Section
from reportgen.sections.base import Shared, load_pixels
from reportgen.sections.maps import cam_model

# Score-CAM costs one forward pass per channel and image: it joins the comparison when it
# is the method shown, or when that many passes stay within this budget.
SCORECAM_PASSES = 1024


@dataclass
class Faithfulness:
    """The three checks of the maps of ``method`` at ``layer``, and the other methods'
    deletion/insertion results beside them."""

    method: str  # the method the report's maps use (``--cam``)
    layer: str
    files: list[str]  # the images checked
    methods: list[fa.MethodScore]  # the shown method first
    random: fa.MethodScore  # a random pixel order (its ``beats_random`` is 0)
    randomisation: list[fa.Randomisation]
    class_sensitivity: fa.ClassSensitivity | None  # None for a one-output model
    notes: list[str] = field(default_factory=list)  # methods left out, and why

    @property
    def shown(self) -> fa.MethodScore:
        return self.methods[0]

    @property
    def most_faithful(self) -> str:
        """The method whose insertion area exceeds its deletion area the most."""
        return max(self.methods, key=lambda m: m.insertion_auc - m.deletion_auc).method

    def checks(self) -> list[tuple[str, bool]]:
        """The shown method's checks, as (what it means, passed), for the verdict line."""
        out = [("its pixels carry the class better than a random order", self.shown.passed)]
        shown = next((r for r in self.randomisation if r.method == self.method), None)
        if shown is not None and shown.passed is not None:
            out.append(("they change when the weights past the layer are shuffled", shown.passed))
        if self.class_sensitivity is not None:
            out.append(("the top class and the runner-up get different maps", self.class_sensitivity.passed))
        return out

    @property
    def passed(self) -> bool:
        return all(ok for _, ok in self.checks())


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _outputs(split: SplitModel, score_source: str) -> Callable[[np.ndarray], np.ndarray]:
    """The model's outputs through ``split`` (Score-CAM's forward pass): the head ends at
    the logits where the graph ends in a softmax, which is put back here."""

    def run(x: np.ndarray) -> np.ndarray:
        scores = split.head(*split.body(x))
        return _softmax(scores) if score_source == "logits before softmax" else scores

    return run


def _methods(shown: str, channels: int, images: int) -> tuple[list[str], list[str]]:
    """The methods compared (the shown one first) and notes on those left out."""
    methods, notes = [shown], []
    for m in CAM_METHODS:
        if m == shown:
            continue
        if m == "scorecam" and channels * images > SCORECAM_PASSES:
            notes.append(
                f"Score-CAM is left out: it needs a forward pass per channel and image ({channels} x {images} = "
                f"{channels * images:,} here); --cam scorecam draws and checks it"
            )
            continue
        methods.append(m)
    return methods, notes


def check_maps(shared: Shared) -> Faithfulness | None:
    """The checks on a stratified sample (by predicted class) of ``--faithfulness-images``;
    None when they are off or no map can be drawn (the galleries say why)."""
    cfg, features, pre = shared.cfg, shared.features, shared.pre
    if cfg.faithfulness_images <= 0:
        return None
    model: MapModel = shared.once(cam_model)
    split = model.split
    if split is None or model.layer is None:
        return None
    rows = stratified_sample(shared.pred, cfg.faithfulness_images, cfg.seed)
    pixels = load_pixels(shared.dataset, [features.files[r] for r in rows], pre)
    rows = np.array([r for r in rows if features.files[r] in pixels], np.int64)
    if not len(rows):
        return None
    x = np.stack([pixels[features.files[r]] for r in rows])
    order = np.argsort(-shared.probs[rows], axis=1, kind="stable")
    targets, runner_up = order[:, 0], (order[:, 1] if order.shape[1] > 1 else None)
    batch, size = cfg.batch_size, pre.size
    with shared.clock("load model"):
        adapter = shared.handle.prepared(size)
    with shared.clock("faithfulness"):
        channels = split.body(x[:1])[0].shape[1]
        methods, notes = _methods(cfg.cam, channels, len(rows))
        randomised = split.randomised(cfg.seed)
        if not randomised.shuffled:
            notes.append(
                "No weights follow the layer (the class scores are its channels, pooled): there is nothing to "
                "randomise, and the maps are the channels themselves."
            )
        maps, scores = {}, []
        for method in methods:
            try:
                maps[method] = compute_cam(
                    method, split, x, targets, size, run_model=_outputs(split, shared.score_source),
                    batch_size=batch, channels_last=pre.channels_last,
                ).maps  # fmt: skip
                if not randomised.shuffled:
                    scores.append(fa.Randomisation(method, None, None))
                    continue
                after = compute_cam(
                    method, randomised, x, targets, size, run_model=_outputs(randomised, shared.score_source),
                    batch_size=batch, channels_last=pre.channels_last,
                ).maps  # fmt: skip
            except UserError as exc:
                if method == cfg.cam:
                    return None  # no map of the shown method: the galleries say why
                notes.append(f"{CAM_NAMES[method]} is left out: {one_line(str(exc), 160)}")
                maps.pop(method, None)
                continue
            scores.append(fa.randomisation(method, maps[method], after))
        sensitivity = None
        if runner_up is not None:
            other = compute_cam(
                cfg.cam, split, x, runner_up, size, run_model=_outputs(split, shared.score_source),
                batch_size=batch, channels_last=pre.channels_last,
            ).maps  # fmt: skip
            sensitivity = fa.class_sensitivity(cfg.cam, maps[cfg.cam], other)
        kind = shared.result.model.output_kind

        def run_probs(b: np.ndarray) -> np.ndarray:
            out = adapter.extract(b, [])[0]
            return _softmax(out) if kind == "logits" else out

        orders = {m: fa.pixel_order(maps[m], cfg.seed) for m in maps}
        h, w = size
        orders["random"] = fa.random_order(len(rows), h * w, cfg.seed)
        with shared.clock.bar("deletion/insertion", fa.passes(len(rows), len(orders)), "pass") as bar:
            curves = fa.deletion_insertion(
                run_probs, x, fa.blurred(x, pre.channels_last), targets, orders,
                channels_last=pre.channels_last, batch_size=batch, on_batch=bar.update,
            )  # fmt: skip
        random = curves.pop("random")
        scored = fa.score_methods(curves, random)
        (random_score,) = fa.score_methods({"random": random}, random)
    result = Faithfulness(
        cfg.cam, model.layer, [features.files[r] for r in rows], scored, random_score, scores, sensitivity, notes
    )
    if not result.passed:
        failed = [what for what, ok in result.checks() if not ok]
        shared.notes.append(
            f"the {CAM_NAMES[cfg.cam]} maps fail {len(failed)} of {len(result.checks())} faithfulness checks "
            f"(not met: {'; '.join(failed)}): read the galleries with care (see Map faithfulness)"
        )
    return result


class FaithfulnessSection(Section):
    id = "faithfulness"
    title = "Map faithfulness"

    def build(self, shared: Shared) -> Faithfulness | None:
        return shared.once(check_maps)

    def json_items(self, content: Faithfulness | None) -> dict[str, Any]:
        if content is None:
            return {"faithfulness": None}
        s = content.class_sensitivity
        return {
            "faithfulness": {
                "images": len(content.files),
                "method": content.method,
                "layer": content.layer,
                "steps": fa.STEPS,
                "passed": content.passed,
                "most_faithful": content.most_faithful,
                "methods": [
                    {
                        "method": m.method,
                        "deletion_auc": m.deletion_auc,
                        "insertion_auc": m.insertion_auc,
                        "beats_random": m.beats_random,
                    }
                    for m in content.methods
                ],
                "random": {"deletion_auc": content.random.deletion_auc, "insertion_auc": content.random.insertion_auc},
                "randomisation": [
                    {"method": r.method, "rank_correlation": r.rank_correlation, "passed": r.passed}
                    for r in content.randomisation
                ],
                "class_sensitivity": None
                if s is None
                else {"images": s.images, "share_different": s.share_different, "passed": s.passed},
                "notes": content.notes,
            }
        }

    def pictures(self, content: Faithfulness) -> PictureRequest:
        curves = {CAM_NAMES[m.method]: (m.deletion_curve, m.insertion_curve) for m in content.methods}
        random = (content.random.deletion_curve, content.random.insertion_curve)
        return PictureRequest(charts={"faithfulness": lambda: figures.faithfulness_figure(curves, random)})
