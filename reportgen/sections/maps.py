"""The model cut for the audit's activation maps, opened once for the units that draw
them (galleries, possible shortcuts, channel view)."""

from __future__ import annotations

from reportgen.map_model import MapModel, open_for_maps
from reportgen.sections.base import Shared


def cam_model(shared: Shared) -> MapModel:
    """The model prepared at the audit's input size and cut at ``--cam-layer`` (or the
    default CAM layer); without a layer to explain, a ``MapModel`` whose note says why.
    A ``--cam-layer`` that cannot be explained stops the audit: the user asked for it."""
    cfg = shared.cfg
    with shared.clock("load model"):
        return open_for_maps(shared.handle, pre=shared.pre, layer=cfg.cam_layer, strict=False)
