"""Learning datasets over a Panel: features + label, qlib-style processors, segments, tabular and
time-series views. Build with `build_dataset(panel, DatasetConfig(...))`."""

from quantcore.dataset.dataset import TEST, TRAIN, VALID, DataKey, Dataset, DatasetConfig, build_dataset, dataset_config
from quantcore.dataset.errors import DatasetError, ProcessorError, SegmentError
from quantcore.dataset.processors import (
    PROCESSORS,
    CSRankNorm,
    CSZScoreNorm,
    DropnaFeature,
    DropnaLabel,
    FieldGroup,
    Fillna,
    FilterCol,
    ProcessInf,
    Processor,
    RobustZScoreNorm,
    ZScoreNorm,
    make_processor,
)
from quantcore.dataset.tsview import TSFill, TSView

__all__ = [
    "TRAIN",
    "VALID",
    "TEST",
    "Dataset",
    "DataKey",
    "DatasetConfig",
    "build_dataset",
    "dataset_config",
    "DatasetError",
    "ProcessorError",
    "SegmentError",
    "PROCESSORS",
    "Processor",
    "make_processor",
    "FieldGroup",
    "DropnaLabel",
    "DropnaFeature",
    "Fillna",
    "ProcessInf",
    "CSZScoreNorm",
    "CSRankNorm",
    "RobustZScoreNorm",
    "ZScoreNorm",
    "FilterCol",
    "TSFill",
    "TSView",
]
