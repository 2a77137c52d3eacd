"""Image captions from dataset metadata (for contrastive training and retrieval tests).

A dataset with a ``caption`` column keeps its captions. Otherwise a caption is composed from
what the row says: the diagnosis (readable name and a synonym), the modality, the body site,
age and sex, dermoscopic criteria (Derm7pt 7-point checklist, PH2 criteria and colours) and
PAD-UFES-20 lesion history (itch, growth, bleeding, elevation, Fitzpatrick type, diameter).
Sentence templates, phrase order and word choices vary with a random generator, so captions of
one class are not all identical; the same seed gives the same captions.

Missing values (:func:`dermkit.values.is_unknown`: empty cells, NaN, "NA", "unknown", "UNK", the
card's ``missing_values``) are never rendered. Columns are recognised by name, so any dataset
using these names gets the phrases.
"""

from __future__ import annotations

import math
import os
import re
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from dermkit.data.card import DatasetCard, load_card
from dermkit.data.card_schema import BOOLEAN_FALSE, BOOLEAN_TRUE
from dermkit.data.prompts import prompt_spec
from dermkit.values import is_unknown

__all__ = ["caption_for_row", "caption_and_negative", "captions_for_split", "captions_with_negatives", "caption_frame",
           "metadata_prompt"]

_MODALITY_WORDS = {
    "dermoscopy": ["dermoscopic image", "dermoscopy image", "dermatoscopic photo", "dermoscopic photograph"],
    "clinical": ["clinical photo", "clinical photograph", "close-up photo", "macroscopic photo"],
    None: ["image", "photo", "skin image"],
}
_SITE_COLUMNS = ("localization", "location", "region", "anatom_site_general", "anatomical_site", "site")
_AGE_COLUMNS = ("age", "age_approximate")
_SEX_COLUMNS = ("sex", "gender")

# Derm7pt 7-point checklist: column -> readable criterion.
_SEVEN_POINT = {
    "pigment_network": "pigment network",
    "streaks": "streaks",
    "pigmentation": "pigmentation",
    "regression_structures": "regression structures",
    "dots_and_globules": "dots and globules",
    "blue_whitish_veil": "blue-whitish veil",
    "vascular_structures": "vascular structures",
}
# PH2 criteria, coded A (absent) / P (present) / T (typical) / AT (atypical).
_PH2 = {
    "pigment_network": "pigment network",
    "dots_globules": "dots and globules",
    "streaks": "streaks",
    "regression_areas": "regression areas",
    "blue_whitish_veil": "blue-whitish veil",
}
_CODES = {"a": "absent", "p": "present", "t": "typical", "at": "atypical"}
_PH2_ASYMMETRY = {0: "a symmetric shape", 1: "asymmetry along one axis", 2: "asymmetry along both axes"}
_COLOURS = {
    "color_white": "white",
    "color_red": "red",
    "color_light_brown": "light brown",
    "color_dark_brown": "dark brown",
    "color_blue_gray": "blue-gray",
    "color_black": "black",
}
# PAD-UFES-20 yes/no lesion history: column -> (phrase if true, phrase if false).
_HISTORY = {
    "itch": ("itches", "does not itch"),
    "grew": ("has grown", "has not grown"),
    "hurt": ("hurts", "is not painful"),
    "changed": ("has changed", "has not changed"),
    "bleed": ("bleeds", "does not bleed"),
}
_ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI"}


class _Row:
    """Read access to a metadata row that treats every missing marker as absent."""

    def __init__(self, row, missing: Sequence[str]):
        self.row = row
        self.missing = missing

    def get(self, column: str) -> str | None:
        if column not in self.row.index:
            return None
        value = self.row[column]
        return None if is_unknown(value, self.missing) else str(value).strip()

    def number(self, column: str) -> float | None:
        value = self.get(column)
        try:
            number = float(value) if value is not None else None
        except ValueError:
            return None
        return number if number is not None and math.isfinite(number) else None

    def flag(self, column: str) -> bool | None:
        value = self.get(column)
        if value is None:
            return None
        key = value.casefold()
        return True if key in BOOLEAN_TRUE else False if key in BOOLEAN_FALSE else None


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _article(word: str) -> str:
    """"a"/"an" by sound, including numbers ("an 8-year-old", "an 18-year-old")."""
    digits = word.split("-")[0]
    if digits.isdigit():
        return "an" if digits.startswith("8") or digits in ("11", "18") else "a"
    return "an" if word[:1].lower() in "aeiou" else "a"


def _diagnosis(r: _Row, card: DatasetCard, rng: np.random.Generator, cls: str | None = None) -> str:
    """The diagnosis phrase (name and a synonym); ``cls`` replaces the row's diagnosis (hard negatives:
    the row's fine diagnosis is then not used, it belongs to the true class)."""
    fine = r.get("diagnosis_fine") if cls is None else None
    cls = r.get("diagnosis") if cls is None else cls
    if cls is None:
        return "a skin lesion"
    name = card.class_names.get(cls, cls) if cls in card.classes else cls
    # "other benign lesion (dermatofibroma, lentigo, ...)": the list in brackets is for people
    # reading the card; in a caption it would clash with the synonym in brackets.
    name = re.sub(r"\s*\([^)]*\)\s*$", "", name) or name
    synonyms = [s for s in (card.synonyms.get(cls, []) if cls in card.classes else [])
                if s.casefold() != name.casefold()]
    # Derm7pt's 20-way diagnosis is more specific than the 5 groups.
    if fine is not None and fine.casefold() not in {name.casefold(), cls.casefold()}:
        synonyms = [fine]
    if not synonyms:
        return name
    synonym = _pick(rng, synonyms)
    # Parentheses, not "also called ...": the caption goes on with ", on the back, ...".
    return _pick(rng, [f"{name} ({synonym})", f"{synonym} ({name})"])


def _site(r: _Row) -> str | None:
    for column in _SITE_COLUMNS:
        value = r.get(column)
        if value is not None:
            return value.lower().replace("head neck", "head or neck").replace("_", " ")
    return None


def _patient(r: _Row, rng: np.random.Generator) -> str | None:
    age = next((r.number(c) for c in _AGE_COLUMNS if r.number(c) is not None), None)
    sex = next((r.get(c).lower() for c in _SEX_COLUMNS if r.get(c) is not None), None)
    nouns = {"female": ["woman", "female patient"], "male": ["man", "male patient"]}.get(
        sex or "", [f"{sex} patient"] if sex else ["patient"])
    if age is not None and age >= 0:
        if age < 18:
            nouns = {"female": ["girl"], "male": ["boy"]}.get(sex or "", ["child"])
        years = f"{int(round(age))}-year-old"
        return f"{_article(years)} {years} {_pick(rng, nouns)}"
    if sex is not None:
        return f"a {_pick(rng, nouns)}"
    return None


def _criterion_phrase(name: str, value: str) -> tuple[str, bool]:
    """(phrase, present) for one dermoscopic criterion value."""
    value = _CODES.get(value.casefold(), value).lower()
    if value == "absent":
        return f"no {name}", False
    if value == "present":
        return name, True
    if name == "regression structures" or name == "vascular structures":
        # Values name a kind ("blue areas", "dotted", "within regression"), not a quality.
        if value == "combinations":
            return f"combined {name}", True
        if value.startswith("within"):
            return f"{name} {value}", True
        return f"{name} ({value})" if name == "regression structures" else f"{value} {name}", True
    return f"{value} {name}", True


def _findings(r: _Row, rng: np.random.Generator) -> list[str]:
    """Dermoscopic criteria and colours: every present finding, a random few absent ones."""
    present, absent = [], []
    # Column names tell the two schemes apart (both have pigment_network and streaks).
    criteria = _SEVEN_POINT if any(r.get(c) is not None for c in ("pigmentation", "dots_and_globules",
                                                                     "regression_structures")) else _PH2
    for column, name in criteria.items():
        value = r.get(column)
        if value is None:
            continue
        phrase, is_present = _criterion_phrase(name, value)
        (present if is_present else absent).append(phrase)
    asymmetry = r.number("asymmetry")
    if asymmetry is not None and int(asymmetry) in _PH2_ASYMMETRY:
        present.insert(0, _PH2_ASYMMETRY[int(asymmetry)])
    colours = [name for column, name in _COLOURS.items() if r.flag(column)]
    if colours:
        present.append(f"{_join(colours)} colour{'s' if len(colours) > 1 else ''}")
    rng.shuffle(present)
    n_absent = int(rng.integers(0, min(2, len(absent)) + 1))
    chosen = [absent[i] for i in sorted(rng.choice(len(absent), n_absent, replace=False))] if n_absent else []
    return present + chosen


def _history(r: _Row, rng: np.random.Generator) -> list[str]:
    """Lesion history and examination facts (PAD-UFES-20 fields, Derm7pt elevation).

    Every positive answer is kept; of the negative ones ("does not bleed") a random one or two,
    so captions stay readable.
    """
    out, negatives = [], []
    for column, (yes, no) in _HISTORY.items():
        flag = r.flag(column)
        if flag is not None:
            (out if flag else negatives).append(f"it {yes if flag else no}")
    if negatives:
        k = int(rng.integers(1, min(2, len(negatives)) + 1))
        out += [negatives[i] for i in sorted(rng.choice(len(negatives), k, replace=False))]
    elevation = r.get("elevation")
    if elevation is not None:
        flag = r.flag("elevation")
        out.append("it is elevated" if flag else "it is flat" if flag is False else f"it is {elevation.lower()}")
    d1, d2 = r.number("diameter_1"), r.number("diameter_2")
    if d1 is not None and d2 is not None:
        out.append(f"it measures about {d1:g} x {d2:g} mm")
    elif d1 is not None or d2 is not None:
        out.append(f"it is about {(d1 if d1 is not None else d2):g} mm across")
    fitz = r.number("fitspatrick") if r.number("fitspatrick") is not None else r.number("fitzpatrick")
    if fitz is not None and int(fitz) in _ROMAN:
        out.append(f"the skin is Fitzpatrick type {_ROMAN[int(fitz)]}")
    breslow = r.get("breslow_category")
    if breslow is not None:
        if "mm" in breslow:
            out.append(f"the Breslow thickness is {breslow}")
        else:  # Derm7pt: "in situ" or "metastasis"
            out.append("it is a melanoma metastasis" if "metasta" in breslow.lower() else f"the melanoma is {breslow}")
    rng.shuffle(out)
    return out


def _modality(r: _Row, card: DatasetCard, modality: str | None) -> str | None:
    value = r.get("modality")
    if value is not None and value.lower() in ("dermoscopy", "clinical"):
        return value.lower()
    if modality is not None:
        return modality
    return card.modality if card.modality in ("dermoscopy", "clinical") else None


def caption_for_row(row, card: DatasetCard, rng: np.random.Generator, modality: str | None = None) -> str:
    """One caption for a metadata row (a pandas Series of ``card.table``).

    Uses the row's ``caption`` when present. ``modality`` (dermoscopy/clinical) overrides the
    card's for the wording; by default a ``modality`` column, else the card, decides.
    """
    return _caption(row, card, rng, modality)[0]


def caption_and_negative(row, card: DatasetCard, rng: np.random.Generator, negative_rng: np.random.Generator,
                         modality: str | None = None) -> tuple[str, str | None]:
    """The row's caption and a *hard negative*: the same caption (same template, site, patient,
    findings, history) with the diagnosis replaced by another class of the card, drawn from
    ``negative_rng`` (so the captions themselves are those of :func:`caption_for_row` for ``rng``).
    The negative is None for a row with a given ``caption``, no diagnosis, or a one-class card."""
    return _caption(row, card, rng, modality, negative_rng)


def _caption(row, card: DatasetCard, rng: np.random.Generator, modality: str | None,
             negative_rng: np.random.Generator | None = None) -> tuple[str, str | None]:
    r = _Row(row, card.missing_values)
    given = r.get("caption")
    if given is not None:
        return given, None
    kind = _pick(rng, _MODALITY_WORDS[_modality(r, card, modality)])
    dx = _diagnosis(r, card, rng)
    negative_dx = None
    others = [c for c in card.classes if c != r.get("diagnosis")]
    if negative_rng is not None and others and r.get("diagnosis") is not None:
        negative_dx = _diagnosis(r, card, negative_rng, cls=_pick(negative_rng, others))
    site = _site(r)
    patient = _patient(r, rng)
    findings = _findings(r, rng)
    history = _history(r, rng)

    where = f" on the {site}" if site else ""
    who = f" {'of' if site else 'in'} {patient}" if patient else ""
    templates: list[Callable[[str], str]] = [
        lambda dx: f"{_article(kind).capitalize()} {kind} of {dx}{where}{who}.",
        lambda dx: f"{dx[:1].upper() + dx[1:]}{where}{who}, {kind}.",
        lambda dx: f"{_article(kind).capitalize()} {kind} showing {dx}{where}{who}.",
        lambda dx: f"{kind[:1].upper() + kind[1:]}: {dx}{where}" + (f" in {patient}" if patient else "") + ".",
    ]
    template = _pick(rng, templates)
    rest = []
    if findings:
        lead = _pick(rng, ["It shows", "Dermoscopic features:", "Findings:", "The lesion has"])
        rest.append(f"{lead} {_join(findings)}.")
    if history:
        text = _join(history)
        rest.append(text[:1].upper() + text[1:] + ".")
    return (" ".join([template(dx), *rest]),
            None if negative_dx is None else " ".join([template(negative_dx), *rest]))


def captions_for_split(
    card: DatasetCard | str | os.PathLike, split: str, seed: int = 0, modality: str | None = None
) -> list[str]:
    """Captions for every row of ``split`` (same order as ``card.rows(split)``), deterministic per seed.

    ``modality`` defaults to the dataset's prompt file (e.g. dermoscopy for Derm7pt's ``image``
    column even though the card is "mixed"), see :mod:`dermkit.data.prompts`.
    """
    return [c for c, _ in captions_with_negatives(card, split, seed, modality, negatives=False)]


def captions_with_negatives(
    card: DatasetCard | str | os.PathLike, split: str, seed: int = 0, modality: str | None = None,
    negatives: bool = True,
) -> list[tuple[str, str | None]]:
    """(caption, hard negative) for every row of ``split``: the captions are those of
    :func:`captions_for_split` for ``seed``; each negative is its caption with another diagnosis
    (see :func:`caption_and_negative`), drawn from a second generator seeded by ``seed``."""
    card = load_card(card)
    if modality is None and card.modality not in ("dermoscopy", "clinical"):
        modality = prompt_spec(card).modality
    rows = card.rows(split)
    rng = np.random.default_rng(seed)
    negative_rng = np.random.default_rng([seed, 1]) if negatives else None
    return [_caption(row, card, rng, modality, negative_rng) for _, row in rows.iterrows()]


def caption_frame(card: DatasetCard | str | os.PathLike, split: str, seed: int = 0) -> pd.DataFrame:
    """``image``, ``diagnosis``, ``caption`` for a split (handy to inspect or export captions)."""
    card = load_card(card)
    rows = card.rows(split)
    return pd.DataFrame({"image": rows["image"].tolist(), "diagnosis": rows["diagnosis"].tolist(),
                         "caption": captions_for_split(card, split, seed)})


def _readable(column: str) -> str:
    return column.replace("_", " ").strip()


def metadata_prompt(row, card: DatasetCard, columns: dict[str, str] | None = None) -> str:
    """Deterministic text prompt from a row's metadata, for a text encoder (no diagnosis).

    ``columns`` (column -> categorical/numeric/boolean) says which fields may be read; the caller
    decides (the fusion method passes its leakage-free feature columns), by default the card's
    metadata columns. Age and sex become "a 55-year-old female", the body site "lesion on the
    back", other fields "<field> <value>" (booleans "<field> yes/no"), in column order. Missing
    values are left out; a row without any usable field gives "no patient information".
    Example: ``a 55-year-old female, lesion on the back, elevation palpable, itch yes``.
    """
    columns = dict(card.metadata_columns if columns is None else columns)
    r = _Row(row, card.missing_values)
    age_col = next((c for c in _AGE_COLUMNS if c in columns), None)
    sex_col = next((c for c in _SEX_COLUMNS if c in columns), None)
    site_col = next((c for c in _SITE_COLUMNS if c in columns), None)
    age = r.number(age_col) if age_col else None
    sex = r.get(sex_col).lower() if sex_col and r.get(sex_col) is not None else None
    parts = []
    if age is not None and age >= 0:
        years = f"{int(round(age))}-year-old"
        parts.append(f"{_article(years)} {years} {sex or 'patient'}")
    elif sex is not None:
        parts.append(f"a {sex} patient")
    if site_col and r.get(site_col) is not None:
        site = r.get(site_col).lower().replace("head neck", "head or neck").replace("_", " ")
        parts.append(f"lesion on the {site}")
    for column, kind in columns.items():
        if column in (age_col, sex_col, site_col):
            continue
        value = r.get(column)
        if value is None:
            continue
        if kind == "boolean":
            flag = r.flag(column)
            if flag is None:
                continue
            parts.append(f"{_readable(column)} {'yes' if flag else 'no'}")
        elif kind == "numeric":
            number = r.number(column)
            if number is not None:
                parts.append(f"{_readable(column)} {number:g}")
        else:
            parts.append(f"{_readable(column)} {value.lower().replace('_', ' ')}")
    return ", ".join(parts) if parts else "no patient information"
