"""DepthContrast pretraining pipeline: data preparation, pretraining, export and evaluation."""

__version__ = "0.1.0"
