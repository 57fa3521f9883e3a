"""Configuration: every option of the run, the values automatic options resolved to, and
what the model file says about itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reportgen.report import Section
from reportgen.sections.base import Shared


@dataclass
class Configuration:
    options: list[tuple[str, Any, str]]  # (option, value as given, what it resolved to where it was left automatic)
    properties: dict[str, str]  # what the model file says about itself (untrusted, shown as stored)


def resolved(shared: Shared) -> dict[str, str]:
    """What the options left to the model or to defaults became in this run."""
    pre, model = shared.pre, shared.result.model
    h, w = pre.size
    out = {
        "size": f"{h}x{w}",
        "mean": ", ".join(f"{v:g}" for v in pre.mean),
        "std": ", ".join(f"{v:g}" for v in pre.std),
        "device": f"{model.device} ({model.runtime})",
    }
    if shared.cfg.features is None and shared.cfg.use_cache:
        out["features"] = str(shared.cfg.cache_path)
    return out


class ConfigurationSection(Section):
    id = "configuration"
    title = "Configuration"

    def build(self, shared: Shared) -> Configuration:
        auto = resolved(shared)
        options = [(key, value, auto.get(key, "")) for key, value in shared.result.options.items()]
        return Configuration(options, shared.result.model.properties)
