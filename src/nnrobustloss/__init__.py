"""nnRobustLoss: a reproducible benchmark of robust losses for nnU-Net under label noise."""

__version__ = "0.1.0"
