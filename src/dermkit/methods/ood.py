"""Every classifying model knows when not to answer: its out-of-distribution detector, fitted and used.

:class:`~dermkit.evaluate.ood.OODDetector` is numbers in, numbers out; this module feeds it from a
:class:`~dermkit.methods.base.Predictor`, whatever the method, through two things every predictor
has: ``predict_paths`` (class probabilities: the max-softmax score) and ``image_features`` (the
image tower's features: the Mahalanobis and k-NN scores; None for a model without one, e.g. a
metadata-only fusion model, which keeps the max-softmax score only).

* :func:`fit_detector`: the train split's features (and labels) fit the feature-space scores;
  the val split and synthetic non-skin images (:func:`dermkit.data.outliers.synthetic_outliers`)
  choose the default score (highest val-vs-outlier AUROC) and set each threshold at the stated
  in-distribution acceptance of val (default 95%); the features of the fixed probe images are the
  encoder's fingerprint. Saved next to the model as ``ood.safetensors`` + ``ood.json``. A
  :class:`~dermkit.experiment.Run` calls it when training ends; ``dermkit ood fit`` on any folder.
* :func:`attach_detector`: :func:`dermkit.methods.load_predictor` reads the folder's detector and
  checks the fingerprint on the probe images (a detector of another encoder is refused: the
  predictor gets none, and ``ood_note`` says why and how to refit).
* :func:`assess`: per image, the detector's score, ``in_domain`` and every score, plus the
  image-quality gate of :mod:`dermkit.data.quality` (run before the model looks at the image).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dermkit.data.card import load_card
from dermkit.data.outliers import bundled_photos, probe_images, synthetic_outliers
from dermkit.data.quality import check_quality
from dermkit.errors import DataError, ModelError
from dermkit.evaluate.ood import DEFAULT_ACCEPTANCE, OODDetector, detection_summary, refit_hint
from dermkit.methods.base import Predictor, scratch_feature_cache
from dermkit.values import is_missing

__all__ = ["OUTLIERS", "NO_DETECTOR", "NOT_IN_DOMAIN", "TRUST_KEYS", "fit_detector", "attach_detector", "assess",
           "evaluate_detection", "ood_scores", "trust_fields", "trust_text"]

#: Synthetic non-skin images that choose the default score on val.
OUTLIERS = 32
#: What a prediction says when its model folder has no detector.
NO_DETECTOR = "no out-of-distribution check was fitted for this model (`dermkit ood fit --model DIR --data DATA`)"
#: What a prediction says when the image is out of the model's domain.
NOT_IN_DOMAIN = "this does not look like the images this model was trained on"
#: The training images in words, by the card's ``modality``.
DOMAIN_WORDS = {"dermoscopy": "dermoscopic images of skin lesions", "clinical": "clinical photos of skin lesions",
                "mixed": "dermoscopic and clinical images of skin lesions"}
#: The keys :func:`trust_fields` adds to a prediction.
TRUST_KEYS = ("ood_score", "in_domain", "ood_limit", "ood_scores", "ood_note", "domain", "quality", "quality_flags")


def _as_files(images, folder: Path, stem: str) -> list[Path]:
    """PNG files of PIL images (predictors read paths)."""
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{stem}-{i:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


def ood_scores(predictor: Predictor, paths: Sequence[str | os.PathLike], progress: bool = False,
               proba: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """``(image features or None, probabilities)`` of ``paths``: what the detector scores."""
    features = predictor.image_features(paths, progress=progress)
    if proba is None:
        proba = predictor.predict_paths(paths, progress=progress)
    return features, proba


def fit_detector(predictor: Predictor, card, out: str | os.PathLike | None = None,
                 acceptance: float = DEFAULT_ACCEPTANCE, seed: int = 0, progress: bool = True) -> OODDetector:
    """Fit, calibrate and (with ``out``, the model folder) save ``predictor``'s detector on ``card``
    (its train split fits, its val split calibrates); returns it and attaches it to the predictor."""
    card = predictor.task_card(load_card(card))
    train, val = card.rows("train"), card.rows("val")
    unknown = sorted(set(train["diagnosis"]) - set(predictor.classes))
    if unknown:
        raise DataError(f"the train split of {card.name} has classes the model does not know: {unknown}; fit the "
                        "detector on the data the model was trained on")
    labels = np.array([predictor.classes.index(d) for d in train["diagnosis"]])
    train_paths = [card.image_path(rel) for rel in train["image"]]
    val_paths = [card.image_path(rel) for rel in val["image"]]
    with tempfile.TemporaryDirectory(prefix="dermkit-ood-") as tmp:
        probes = _as_files(probe_images(), Path(tmp), "probe")
        outliers = _as_files([image for _, image in synthetic_outliers(OUTLIERS, seed=seed)], Path(tmp), "outlier")
        fingerprint = predictor.image_features(probes)
        train_features = predictor.image_features(train_paths, progress=progress)
        val_features, val_proba = ood_scores(predictor, val_paths, progress)
        out_features, out_proba = ood_scores(predictor, outliers)
    detector = OODDetector.fit(train_features, labels, seed=seed, fingerprint=fingerprint)
    detector.calibrate(val_features, val_proba, out_features, out_proba, acceptance)
    detector.domain = f"{DOMAIN_WORDS.get(card.modality, 'images of skin lesions')} ({card.name})"
    if out is not None:
        detector.save(out)
    predictor.ood, predictor.ood_note = detector, ""
    return detector


def attach_detector(predictor: Predictor, folder: str | os.PathLike) -> Predictor:
    """Give ``predictor`` the detector saved in ``folder`` after checking its fingerprint; without
    one (or with one of another encoder) it predicts with ``ood_note`` saying why not checked."""
    detector = OODDetector.load(folder)
    predictor.ood, predictor.ood_note = None, NO_DETECTOR
    if detector is None:
        return predictor
    if detector.fingerprint is not None:
        with tempfile.TemporaryDirectory(prefix="dermkit-ood-") as tmp:
            with scratch_feature_cache(predictor, tmp):
                features = predictor.image_features(_as_files(probe_images(), Path(tmp), "probe"))
        try:
            if features is None:
                raise ModelError(f"the OOD detector in {folder} was fitted on image features but this model has no "
                                 f"image tower; {refit_hint(folder)}")
            detector.check_fingerprint(features, folder)
        except ModelError as exc:
            predictor.ood_note = f"out-of-distribution check refused: {exc}"
            warnings.warn(predictor.ood_note, UserWarning, stacklevel=2)
            return predictor
    predictor.ood, predictor.ood_note = detector, ""
    return predictor


def assess(predictor: Predictor, paths: Sequence[str | os.PathLike], proba: np.ndarray | None = None,
           progress: bool = False) -> list[dict[str, Any]]:
    """Per image: ``ood_score`` (the default score, higher = further from the training data),
    ``in_domain`` (score <= the val threshold), ``ood_scores`` (every score), ``ood_note``, and
    ``quality`` (:func:`dermkit.data.quality.check_quality`: "ok" or the flags with value and limit)."""
    quality = [check_quality(p) for p in paths]
    detector = getattr(predictor, "ood", None)
    if detector is None or not len(paths):
        note = getattr(predictor, "ood_note", "") or NO_DETECTOR
        return [{"ood_score": None, "in_domain": None, "ood_scores": {}, "ood_note": note, "quality": q}
                for q in quality]
    features, proba = ood_scores(predictor, paths, progress, proba)
    if detector.feature_dim is None:
        features = None
    scores = detector.scores(features, proba)
    default = scores[detector.default]
    limit = detector.thresholds[detector.default]
    return [{"ood_score": float(default[i]), "in_domain": bool(default[i] <= limit), "ood_limit": float(limit),
             "ood_scores": {name: float(values[i]) for name, values in scores.items()},
             "ood_note": "", "domain": detector.domain, "quality": q} for i, q in enumerate(quality)]


def trust_fields(check: dict[str, Any]) -> dict[str, Any]:
    """One :func:`assess` entry as JSON-ready prediction fields (:data:`TRUST_KEYS`)."""
    quality = check["quality"]
    return {"ood_score": None if check["ood_score"] is None else round(check["ood_score"], 6),
            "in_domain": check["in_domain"],
            "ood_limit": None if check.get("ood_limit") is None else round(check["ood_limit"], 6),
            "ood_scores": {k: round(v, 6) for k, v in check["ood_scores"].items()},
            "ood_note": check["ood_note"], "domain": check.get("domain"),
            "quality": quality.summary, "quality_flags": [flag.to_dict() for flag in quality.flags]}


def trust_text(fields: dict[str, Any]) -> str:
    """One line for people: in domain or not (score and limit), and the image quality."""
    if fields["in_domain"] is None:
        domain = f"in domain: not checked ({fields['ood_note']})"
    elif fields["in_domain"]:
        domain = f"in domain: yes (OOD score {fields['ood_score']:.4g} <= limit {fields['ood_limit']:.4g})"
    else:
        domain = (f"in domain: NO, {NOT_IN_DOMAIN}" + (f": {fields['domain']}" if fields.get("domain") else "")
                  + f" (OOD score {fields['ood_score']:.4g} > limit {fields['ood_limit']:.4g}); do not read the "
                  "probabilities as a diagnosis")
    return f"{domain}; quality: {fields['quality']}"


#: ``--ood-data`` names that are not datasets: generated non-skin images, and photos bundled with
#: installed packages (matplotlib, scikit-learn sample images).
SYNTHETIC, BUNDLED = "synthetic", "bundled"
SYNTHETIC_IMAGES = 64


def _ood_set(spec: str, folder: Path, seed: int) -> tuple[str, list[Path]]:
    """``(name, image paths)`` of one ``--ood-data`` entry: ``synthetic``, ``bundled``, or a dataset
    ``NAME[:COLUMN]`` (its test split when it has one, else every row; COLUMN another image column,
    e.g. ``derm7pt:clinic_image``)."""
    spec = spec.strip()
    if spec == SYNTHETIC:
        return (f"synthetic non-skin images ({SYNTHETIC_IMAGES})",
                _as_files([image for _, image in synthetic_outliers(SYNTHETIC_IMAGES, seed=seed)], folder, "synthetic"))
    if spec == BUNDLED:
        photos = bundled_photos()
        if not photos:
            raise DataError("--ood-data bundled: no sample photos found in the installed packages "
                            "(matplotlib, scikit-learn)")
        return f"photos bundled with installed packages ({len(photos)})", [path for _, path in photos]
    name, _, column = spec.partition(":")
    card = load_card(name)
    column = column or "image"
    if column not in card.table.columns:
        raise DataError(f"--ood-data {spec}: {card.metadata_csv} has no column {column!r}; image columns look like "
                        f"{', '.join(c for c in card.table.columns if 'image' in c.lower()) or 'image'}")
    table = card.table
    if "split" in table.columns and (table["split"] == "test").any():
        rows, where = card.rows("test"), "test"
    else:
        rows, where = table, "all rows"
    values = [v for v in rows[column] if isinstance(v, str) and v.strip() and not is_missing(v)]
    if not values:
        raise DataError(f"--ood-data {spec}: no images in column {column!r} of {card.name} ({where})")
    label = card.name + ("" if column == "image" else f" {column}") + f" ({where})"
    return label, [card.image_path(v) for v in values]


def evaluate_detection(predictor: Predictor, id_paths: Sequence[str | os.PathLike], id_proba: np.ndarray,
                       others: Sequence[str], id_name: str = "in-distribution test", n_boot: int = 1000,
                       seed: int = 0, progress: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """The detector on ``id_paths`` against each ``--ood-data`` set: (:func:`detection_summary`,
    default scores per set for the histogram)."""
    detector = getattr(predictor, "ood", None)
    if detector is None:
        raise ModelError(f"--ood-data: {getattr(predictor, 'ood_note', '') or NO_DETECTOR}")
    use_features = detector.feature_dim is not None
    id_scores = detector.scores(predictor.image_features(id_paths, progress=progress) if use_features else None,
                                id_proba)
    sets = {}
    with tempfile.TemporaryDirectory(prefix="dermkit-ood-") as tmp:
        for spec in others:
            name, paths = _ood_set(spec, Path(tmp), seed)
            features, proba = ood_scores(predictor, paths, progress)
            sets[name] = detector.scores(features if use_features else None, proba)
    default = detector.default
    summary = detection_summary(id_scores, sets, default, detector.thresholds[default], id_name=id_name,
                                n_boot=n_boot, seed=seed)
    return summary, {id_name: id_scores[default], **{name: scores[default] for name, scores in sets.items()}}
