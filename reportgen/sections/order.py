"""The report's sections, in reading order: the one list the pipeline builds, the picture
step draws, the JSON sidecar writes and the page lays out (``templates/report.html.j2``
includes ``templates/sections/<id>.html.j2`` for each).  Adding a section is one module
with a :class:`~reportgen.report.Section`, one partial, and one line here."""

from __future__ import annotations

from reportgen.report import Section
from reportgen.sections.balance import BalanceSection
from reportgen.sections.calibration import CalibrationSection
from reportgen.sections.channels import ChannelsSection
from reportgen.sections.configuration import ConfigurationSection
from reportgen.sections.confusion import ConfusionSection
from reportgen.sections.explorer import ExplorerSection
from reportgen.sections.faithfulness import FaithfulnessSection
from reportgen.sections.galleries import GalleriesSection
from reportgen.sections.knn import KnnSection
from reportgen.sections.layers import LayersSection
from reportgen.sections.metadata import MetadataSection
from reportgen.sections.multilabel import CooccurrenceSection, LabelMetricsSection, LabelSuspectsSection
from reportgen.sections.per_class import PerClassSection
from reportgen.sections.predictions import PredictionsSection
from reportgen.sections.robustness import RobustnessSection
from reportgen.sections.shortcuts import ShortcutsSection
from reportgen.sections.skipped import SkippedSection
from reportgen.sections.slices import SlicesSection
from reportgen.sections.summary import SummarySection
from reportgen.sections.suspects import DuplicatesSection, MislabelsSection
from reportgen.sections.tsne import TsneSection
from reportgen.sections.units import UnitsSection

REPORT: list[Section] = [
    SummarySection(),
    ShortcutsSection(),
    ConfusionSection(),
    PerClassSection(),
    LabelMetricsSection(),
    CooccurrenceSection(),
    BalanceSection(),
    CalibrationSection(),
    SlicesSection(),
    MetadataSection(),
    RobustnessSection(),
    LayersSection(),
    TsneSection(),
    ExplorerSection(),
    KnnSection(),
    MislabelsSection(),
    LabelSuspectsSection(),
    DuplicatesSection(),
    FaithfulnessSection(),
    GalleriesSection(),
    ChannelsSection(),
    UnitsSection(),
    PredictionsSection(),
    SkippedSection(),
    ConfigurationSection(),
]
