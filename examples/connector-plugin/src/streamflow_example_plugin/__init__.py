"""An example third-party connector package: the ``fortune`` source and sink."""

from ._fortune import FORTUNE, FortuneSink, FortuneSinkConfig, FortuneSource, FortuneSourceConfig

__all__ = ["FORTUNE", "FortuneSink", "FortuneSinkConfig", "FortuneSource", "FortuneSourceConfig"]
