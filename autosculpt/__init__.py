"""autosculpt: prune over-sized segmentation models to a CPU latency budget.

The code lives in three packages mapped into this namespace by pyproject.toml:
``autosculpt.space`` (models, search space, pruning), ``autosculpt.search``
(data, training, latency, the study, export, CLI) and ``autosculpt.reports``.
"""

__version__ = "0.1.0"
