"""The analyses: each a pure function from arrays to a dataclass of numbers.

No HTML, no plotting and no model calls happen here (``cam`` takes the model's split
as a callable); the figures and the report are built from these results.
"""
