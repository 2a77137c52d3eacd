"""Label tasks derived from a dataset card: e.g. Derm7pt's 5 groups -> melanoma vs. rest.

A task is a string in a method config (``task: melanoma_vs_rest``):

``None`` / ``"all"``
    the card's own classes.
``"melanoma_vs_rest"`` / ``"positive_vs_rest"``
    the card's ``positive_class`` (melanoma for every packaged card) against everything else.
``"binary:CLASS"``
    ``CLASS`` against everything else.

A binary task's classes are ``[negative, positive]`` (the positive class second, which is what the
evaluation layer's binary metrics read as "positive"); the negative class is called ``other`` with
the readable name ``other skin lesion`` unless the config names it. The derived card shares the
folder and images of the original; its table maps ``diagnosis`` and keeps the original label in
``diagnosis_original``. Models trained on one dataset's binary task therefore evaluate on another's
(Derm7pt melanoma-vs-rest -> PH2 melanoma-vs-nevi) because the class names agree.
"""

from __future__ import annotations

from dermkit.data.card import DatasetCard, load_card
from dermkit.errors import ConfigError

__all__ = ["derive_task", "NEGATIVE_CLASS"]

NEGATIVE_CLASS = "other"
NEGATIVE_NAME = "other skin lesion"


def derive_task(card: DatasetCard | str, task: str | None, negative: str = NEGATIVE_CLASS,
                negative_name: str = NEGATIVE_NAME) -> DatasetCard:
    """The card relabelled for ``task`` (the card itself for ``None``/``"all"``)."""
    card = load_card(card)
    if task in (None, "", "all"):
        return card
    if task in ("melanoma_vs_rest", "positive_vs_rest"):
        positive = card.positive_class
        if positive is None:
            raise ConfigError(f"task {task!r} needs a positive_class in the card of {card.name}; "
                              "set it in dataset.yaml or use task: binary:CLASS")
    elif task.startswith("binary:"):
        positive = task.split(":", 1)[1].strip()
    else:
        raise ConfigError(f"unknown task {task!r}; use all, melanoma_vs_rest or binary:CLASS")
    if positive not in card.classes:
        raise ConfigError(f"task {task!r}: {positive!r} is not a class of {card.name} ({', '.join(card.classes)})")
    if negative == positive:
        raise ConfigError(f"task {task!r}: the negative class name must differ from {positive!r}")

    spec = card.to_dict()
    spec.pop("root", None)
    spec.update(
        name=card.name,
        classes=[negative, positive],
        class_names={negative: negative_name, positive: card.class_names[positive]},
        synonyms={negative: [negative_name], positive: card.synonyms[positive]},
        positive_class=positive,
        task=task,
    )
    table = card.table.copy()
    table["diagnosis_original"] = table["diagnosis"]
    known = table["diagnosis"].notna()
    diagnosis = table.loc[known, "diagnosis"]
    table.loc[known, "diagnosis"] = diagnosis.where(diagnosis == positive, negative)
    return DatasetCard(card.root, spec, card.sources + (f"task {task}",), table=table)
