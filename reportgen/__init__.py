"""reportgen: audit an image classifier and write one self-contained HTML report.

The stages, each in its own module::

    data.discover / data.ImageDataset        the image folder, labels, skipped files
    models.load_model -> models.ModelAdapter one interface over torch and onnxruntime
    extract.extract -> extract.Features      one streamed pass, pooled features of every layer
    ray_engine.extract_on_ray                the same pass by Ray workers, shard by shard (--engine ray)
    analyses.*                               pure functions from arrays to dataclasses of numbers
    figures / render                         plots, then Jinja -> report.html + report.json

``pipeline.audit`` runs them in order.
"""

__version__ = "0.1.0"
