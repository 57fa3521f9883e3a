"""The report's sections: one module per part of the report (or a pair of parts that read
one computation, like the suspects), each a :class:`~reportgen.report.Section` whose
content is a plain dataclass; ``order.py`` lists them in reading order.

``base.py`` holds what they share (:class:`~reportgen.sections.base.Shared`: the run's
results and the intermediate results several sections need, each computed once), and
``neighbours.py`` and ``maps.py`` those intermediate results: every layer's neighbours,
the suspects and the t-SNE; the model cut for maps.
"""
