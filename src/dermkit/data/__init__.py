"""Datasets: cards (class lists, names, synonyms, metadata types), validation, splits, images.

    >>> from dermkit.data import load_card, check_dataset
    >>> card = load_card("ham10000")          # or a folder with metadata.csv
    >>> check_dataset(card).raise_if_errors()
    >>> train = card.rows("train"); y = card.labels(train)
"""

from dermkit.data.card import DatasetCard, data_root, load_card
from dermkit.data.card_schema import METADATA_TYPES, SPLITS, known_cards
from dermkit.data.images import ImageProblem, open_image, resolve_image_path
from dermkit.data.metadata_csv import csv_lines
from dermkit.data.split import effective_groups, make_splits, write_split
from dermkit.data.validate import CheckResult, Problem, check_dataset

__all__ = [
    "DatasetCard",
    "load_card",
    "data_root",
    "known_cards",
    "csv_lines",
    "SPLITS",
    "METADATA_TYPES",
    "check_dataset",
    "CheckResult",
    "Problem",
    "make_splits",
    "write_split",
    "effective_groups",
    "open_image",
    "resolve_image_path",
    "ImageProblem",
]
