"""A model opened for activation maps: loaded, its preprocessing resolved, prepared at its
input size, its CAM layer chosen and the graph cut there.

Every place that draws maps (the audit's galleries, shortcuts and channel view,
``reportgen cam``, ``compare``'s flips) opens the model here, so the default layer and
the refusals are the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from reportgen.data import Preprocess, resolve_preprocess
from reportgen.errors import UserError
from reportgen.models import (
    ModelAdapter,
    ModelHandle,
    SplitModel,
    default_cam_layer,
    graph_gap,
    missing_layer_message,
)


@dataclass
class MapModel:
    """The model ready for maps; ``split`` is None (and ``note`` says why) when no map
    can be drawn and the caller asked not to fail over it."""

    adapter: ModelAdapter
    pre: Preprocess
    layer: str | None
    split: SplitModel | None
    note: str = ""


def open_for_maps(
    handle: ModelHandle,
    *,
    pre: Preprocess | None = None,
    size: tuple[int, int] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    resize: str | None = None,
    layer: str | None = None,
    strict: bool = True,
) -> MapModel:
    """Open ``handle``'s model for maps of ``layer`` (a module path or tensor name; None:
    the model's default CAM layer, see ``models.default_cam_layer``).

    ``pre`` is the preprocessing to use (a recorded one); without it, it is resolved from
    the model and ``size``/``mean``/``std``/``resize`` as the audit resolves it.  With
    ``strict``, a model without a layer to explain is an error; without, the result
    carries a note instead.  A layer the user named that cannot be explained is always an
    error: the user asked for it.
    """
    adapter = handle.open()
    if pre is None:
        pre = resolve_preprocess(adapter.info, size=size, mean=mean, std=std, resize=resize)
    adapter = handle.prepared(pre.size)
    name = adapter.resolve(layer) if layer else default_cam_layer(adapter)
    if layer and name not in {info.name for info in adapter.layers()}:
        raise UserError(missing_layer_message(layer, adapter.layers()))
    if name is None:
        why = graph_gap(adapter.layers()) or (
            "the model has no tensor with spatial extent, so no activation map can be drawn"
        )
        if strict:
            raise UserError(why if "--cam-layer" in why else f"{why}; name one with --layer")
        return MapModel(adapter, pre, None, None, why)
    try:
        split = adapter.split(name)
    except UserError as exc:
        if strict or layer:
            raise
        return MapModel(adapter, pre, name, None, f"no CAM: {exc}")
    return MapModel(adapter, pre, name, split)
