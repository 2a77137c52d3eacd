"""Out-of-distribution (OOD) detection: is this image like the ones the model was trained on?

Numbers in, numbers out: the features of the model's image tower (an ``(N, D)`` array, e.g. the
1280-d pooled features of an EfficientNet or a 512-d CLIP embedding) and the class probabilities
the predictor returns (every dermkit method returns probabilities, not logits). Nothing here runs
a model, so the detector is the same for every training method.

Scores (all oriented **higher = further from the training data**)
------------------------------------------------------------------

``msp``
    ``1 - max_c p_c``: the maximum-softmax-probability baseline of Hendrycks & Gimpel, *A Baseline
    for Detecting Misclassified and Out-of-Distribution Examples in Neural Networks* (ICLR 2017).
    Computed by pytorch-ood's ``MaxSoftmax`` on the log-probabilities (softmax of ``log p`` is
    ``p``, so ``MaxSoftmax`` gives ``-max p``) plus one. It needs only the probabilities, so it is
    the one score a model without an image tower has.
``mahalanobis``
    Lee et al., *A Simple Unified Framework for Detecting Out-of-Distribution Samples and
    Adversarial Attacks* (NeurIPS 2018): the Mahalanobis distance to the closest class mean under
    one covariance shared by the classes, ``min_c sqrt((z - mu_c)^T P (z - mu_c))``. The distances
    come from pytorch-ood's ``Mahalanobis.predict_features`` (which returns half the squared
    distance; we report its square root ``sqrt(2 s)``, a distance in standard deviations). The
    class means and the precision matrix ``P`` are fitted here, not by ``Mahalanobis.fit_features``:
    pytorch-ood inverts the unnormalised scatter matrix plus a 1e-6 ridge, which is singular (or
    numerically meaningless) when the feature dimension exceeds the number of training images,
    the common case for small dermatology sets (1280-d features, a few hundred images). We use the
    Ledoit-Wolf shrinkage estimate (scikit-learn ``LedoitWolf``) of the covariance of the
    class-centred training features, which is well conditioned for any ``N`` and ``D``.
``knn``
    Sun et al., *Out-of-Distribution Detection with Deep Nearest Neighbors* (ICML 2022): the
    Euclidean distance of the L2-normalised feature to its k-th nearest L2-normalised training
    feature, by pytorch-ood's ``KNN`` (scikit-learn nearest neighbours). ``k = min(50, bank // 10)``
    (at least 1), 50 being the paper's choice. The training bank is capped at
    :data:`KNN_BANK_ROWS` rows by a seeded subsample stratified by class, and stored L2-normalised
    in float16 so that model folders stay small; the detector is fitted on the float16 bank from
    the start, so a saved and reloaded detector gives the same scores.

No energy score: it needs logits, and the predictors return probabilities (``log p`` is the logits
up to a per-image constant, so the energy of ``log p`` is always 0).

Calibration, default score and threshold
----------------------------------------

:meth:`OODDetector.calibrate` scores the validation split (in-distribution) and a set of outliers
(by default the synthetic non-skin images of :mod:`dermkit.data.outliers`), records each score's
AUROC of validation vs outliers, and makes the score with the highest AUROC the default; equal
AUROCs are broken in the order of :data:`SCORES` (mahalanobis, knn, msp: feature-space scores
first, as they do not depend on how well the classifier's probabilities are calibrated). Each
score's threshold is the empirical ``acceptance`` quantile of its validation scores: the k-th
smallest score with ``k = ceil(acceptance * n)``. An image is in the domain when its score is
``<= threshold``, so exactly ``k / n`` of the validation images are accepted (at least
``acceptance``, less than ``acceptance + 1/n``) unless several validation images share the k-th
score: tied images are all accepted, and ``val_accepted`` records the share actually accepted.

Encoder fingerprint
-------------------

A detector is only valid for the encoder whose features it was fitted on. It stores the features
of the fixed probe images of :func:`dermkit.data.outliers.probe_images`;
:meth:`OODDetector.check_fingerprint` compares them with the current encoder's features of the
same images and refuses (``ModelError``) another feature dimension or a mean cosine similarity
below :data:`MIN_PROBE_COSINE`. The check does not depend on where the encoder weights live.

Files (next to the model)
-------------------------

``ood.safetensors`` (class means, precision matrix, kNN bank, probe features) and ``ood.json``
(everything else: format version, default score, thresholds, validation AUROCs, the SHA-256 of the
tensor file, a one-line description). Both are written atomically, the tensors first; a JSON that
does not match its tensor file is refused.

Evaluation
----------

:func:`detection_metrics` gives the AUROC and the FPR at 95% TPR of in-distribution test images vs
another dataset with percentile bootstrap CIs; :func:`plot_score_histograms` draws the score
distributions and the threshold.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..errors import DermkitError, ModelError
from ..io import atomic_path, write_json
from .bootstrap import percentile_ci, resample_indices, resample_weights
from .metrics import TieBlocks, auc_from_blocks, quiet

__all__ = [
    "DEFAULT_ACCEPTANCE",
    "FEATURE_SCORES",
    "KNN_BANK_ROWS",
    "MIN_PROBE_COSINE",
    "OOD_CARD",
    "OOD_TENSORS",
    "OODDetector",
    "SCORES",
    "acceptance_threshold",
    "detection_metrics",
    "detection_summary",
    "plot_score_histograms",
    "score_histogram_figure",
    "refit_hint",
]

#: Every score, in the order that breaks ties between equal validation AUROCs.
SCORES = ("mahalanobis", "knn", "msp")
#: The scores that need the image tower's features.
FEATURE_SCORES = ("mahalanobis", "knn")
#: Share of in-distribution validation images accepted by the default threshold.
DEFAULT_ACCEPTANCE = 0.95
#: Most rows kept in the kNN bank (a class-stratified subsample beyond that).
KNN_BANK_ROWS = 4096
#: Largest k of the kNN score (the paper's choice for CIFAR-10).
KNN_MAX_K = 50
#: Probe-image features of the current encoder must have at least this mean cosine similarity.
MIN_PROBE_COSINE = 0.999
#: Target true positive rate (in-distribution images accepted) of ``fpr95``.
TPR = 0.95

OOD_CARD = "ood.json"
OOD_TENSORS = "ood.safetensors"
FORMAT = "dermkit-ood"
FORMAT_VERSION = 1

_DESCRIBE = {
    "msp": "1 - max class probability (maximum softmax probability, Hendrycks & Gimpel 2017)",
    "mahalanobis": "Mahalanobis distance to the closest class mean, shrinkage covariance (Lee et al. 2018)",
    "knn": "distance to the k-th nearest training feature, L2-normalised (Sun et al. 2022)",
}
_TOL = 1e-9
#: Resamples x rows held at once by ``detection_metrics`` (float64 weight matrices of ~32 MB).
_CHUNK_ELEMENTS = 4_000_000


def refit_hint(folder: str | Path | None) -> str:
    """The command that refits the detector of a model folder."""
    where = str(folder) if folder is not None else "FOLDER"
    return f"refit it with `dermkit ood fit --model {where} --data DATA`"


class OODDetector:
    """Out-of-distribution scores of a classifier, fitted on its training features.

    Build one with :meth:`fit`, then :meth:`calibrate` it on validation images and outliers;
    :meth:`save` / :meth:`load` keep it in a model folder. Attributes: ``default`` (name of the
    default score, ``None`` before calibration), ``thresholds`` and ``val_auroc`` and
    ``val_accepted`` (per score), ``acceptance``, ``n_train``, ``n_classes``, ``feature_dim``
    (``None`` for a probabilities-only detector), ``knn_k``, ``fingerprint`` (probe-image features
    or ``None``), ``folder`` (where it was loaded from or saved to).
    """

    def __init__(
        self,
        *,
        means: np.ndarray | None = None,
        precision: np.ndarray | None = None,
        bank: np.ndarray | None = None,
        knn_k: int | None = None,
        n_train: int = 0,
        n_classes: int = 0,
        seed: int = 0,
        fingerprint: np.ndarray | None = None,
        default: str | None = None,
        thresholds: Mapping[str, float] | None = None,
        acceptance: float | None = None,
        val_auroc: Mapping[str, float] | None = None,
        val_accepted: Mapping[str, float] | None = None,
        n_val: int | None = None,
        n_outliers: int | None = None,
        folder: str | Path | None = None,
        domain: str | None = None,
    ):
        self.means = None if means is None else np.ascontiguousarray(means, dtype=np.float32)
        self.precision = None if precision is None else np.ascontiguousarray(precision, dtype=np.float32)
        self.bank = None if bank is None else np.ascontiguousarray(bank, dtype=np.float16)
        self.feature_dim = None if self.means is None else int(self.means.shape[1])
        self.knn_k = None if knn_k is None else int(knn_k)
        self.n_train = int(n_train)
        self.n_classes = int(n_classes)
        self.seed = int(seed)
        self.fingerprint = None if fingerprint is None else np.ascontiguousarray(fingerprint, dtype=np.float32)
        self.default = default
        self.thresholds = {k: float(v) for k, v in (thresholds or {}).items()}
        self.acceptance = None if acceptance is None else float(acceptance)
        self.val_auroc = {k: float(v) for k, v in (val_auroc or {}).items()}
        self.val_accepted = {k: float(v) for k, v in (val_accepted or {}).items()}
        self.n_val = n_val
        self.n_outliers = n_outliers
        self.folder = None if folder is None else Path(folder)
        #: What the training images were, in words (e.g. "dermoscopic images of skin lesions (ham10000)").
        self.domain = domain
        self._mahalanobis = None
        self._knn = None

    # ------------------------------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, train_features, train_labels=None, *, seed: int = 0, fingerprint=None,
            bank_rows: int = KNN_BANK_ROWS) -> OODDetector:
        """Fit the feature-space scores on the training split's features and integer labels.

        ``train_features=None`` gives a probabilities-only detector (``msp`` alone) for a model
        without an image tower; ``train_labels`` are then only counted. ``seed`` fixes the kNN
        bank subsample; ``fingerprint`` are the features of :func:`~dermkit.data.outliers.probe_images`.
        """
        if train_features is None:
            n = 0 if train_labels is None else len(np.asarray(train_labels))
            n_classes = 0 if train_labels is None else len(np.unique(np.asarray(train_labels)))
            return cls(n_train=n, n_classes=n_classes, seed=seed)
        z = _features(train_features, "train_features")
        if train_labels is None:
            raise DermkitError("train_labels are needed to fit the class means of the Mahalanobis score")
        y = np.asarray(train_labels)
        if y.shape != (len(z),):
            raise DermkitError(f"train_labels must give one label per feature row ({len(z)}), got shape {y.shape}")
        if len(z) < 2:
            raise DermkitError(f"the OOD detector needs at least 2 training images, got {len(z)}")
        classes, codes = np.unique(y, return_inverse=True)
        means, precision = _fit_mahalanobis(z, codes, len(classes))
        bank = _knn_bank(z, codes, bank_rows, seed)
        k = max(1, min(KNN_MAX_K, len(bank) // 10))
        detector = cls(means=means, precision=precision, bank=bank, knn_k=k, n_train=len(z),
                       n_classes=len(classes), seed=seed)
        if fingerprint is not None:
            detector.set_fingerprint(fingerprint)
        return detector

    @property
    def score_names(self) -> tuple[str, ...]:
        """The scores this detector can compute (``("msp",)`` without features)."""
        return SCORES if self.feature_dim is not None else ("msp",)

    # --------------------------------------------------------------------------------------- scores
    def scores(self, features, probabilities) -> dict[str, np.ndarray]:
        """Every available score of each image, ``{name: (N,) float64}``, higher = more OOD.

        ``features=None`` (no image tower) gives ``msp`` only, ``probabilities=None`` only the
        feature-space scores. Raises ``ModelError`` when the feature dimension is not the one the
        detector was fitted on.
        """
        if features is None and probabilities is None:
            raise DermkitError("OOD scores need the image features, the class probabilities, or both")
        out: dict[str, np.ndarray] = {}
        n = None
        if features is not None:
            if self.feature_dim is None:
                raise ModelError(
                    f"the OOD detector{self._where()} was fitted without image features (probabilities only); "
                    f"{refit_hint(self.folder)} to use feature-space scores"
                )
            z = _features(features, "features")
            self._check_dim(z.shape[1])
            n = len(z)
            zt = torch.from_numpy(z.astype(np.float64))
            half_sq = self._mahalanobis_detector().predict_features(zt).numpy()
            out["mahalanobis"] = np.sqrt(2.0 * np.maximum(half_sq, 0.0))
            out["knn"] = self._knn_detector().predict_features(zt).numpy().astype(np.float64)
        if probabilities is not None:
            p = _probabilities(probabilities)
            if n is not None and len(p) != n:
                raise DermkitError(f"features have {n} rows but probabilities {len(p)}")
            out["msp"] = _msp(p)
        return {name: out[name] for name in SCORES if name in out}

    def score(self, features, probabilities, name: str | None = None) -> np.ndarray:
        """One score (the default unless ``name`` is given) of each image."""
        name = self._name(name)
        if name in FEATURE_SCORES and features is None:
            raise ModelError(f"the OOD score {name!r} needs the image features, got none")
        if name == "msp" and probabilities is None:
            raise ModelError("the OOD score 'msp' needs the class probabilities, got none")
        return self.scores(features if name in FEATURE_SCORES else None,
                           probabilities if name == "msp" else None)[name]

    def in_domain(self, features, probabilities, name: str | None = None) -> np.ndarray:
        """Boolean array: True where the score is ``<=`` its calibrated threshold (image accepted)."""
        name = self._name(name)
        if name not in self.thresholds:
            raise ModelError(f"the OOD detector{self._where()} is not calibrated: no threshold for {name!r}")
        return self.score(features, probabilities, name) <= self.thresholds[name]

    # ---------------------------------------------------------------------------------- calibration
    def calibrate(self, val_features, val_probabilities, outlier_features=None, outlier_probabilities=None,
                  acceptance: float = DEFAULT_ACCEPTANCE, *, fingerprint=None) -> OODDetector:
        """Choose the default score and set every score's threshold on the validation split.

        The default is the score with the highest AUROC of validation (in-distribution) vs the
        outliers (ties broken in the order of :data:`SCORES`); without outliers it is the first
        available score of that order and ``val_auroc`` stays empty. Each threshold is the
        ``acceptance`` quantile of the validation scores (see the module docstring). Returns self.
        """
        if not 0.0 < acceptance <= 1.0:
            raise DermkitError(f"acceptance must be in (0, 1], got {acceptance}")
        val = self.scores(val_features, val_probabilities)
        if fingerprint is not None:
            self.set_fingerprint(fingerprint)
        names = list(val)
        auroc: dict[str, float] = {}
        n_outliers = None
        if outlier_features is not None or outlier_probabilities is not None:
            outliers = self.scores(outlier_features, outlier_probabilities)
            names = [name for name in names if name in outliers]
            if not names:
                raise DermkitError("the outliers have no score in common with the validation images "
                                   "(give features to both, or probabilities to both)")
            n_outliers = len(next(iter(outliers.values())))
            for name in names:
                auroc[name] = _auroc(val[name], outliers[name])
        self.val_auroc = auroc
        self.default = max(names, key=lambda s: (_rounded(auroc.get(s, 0.0)), -SCORES.index(s)))
        self.acceptance = float(acceptance)
        self.thresholds, self.val_accepted = {}, {}
        for name in val:
            threshold = acceptance_threshold(val[name], acceptance)
            self.thresholds[name] = threshold
            self.val_accepted[name] = float(np.mean(val[name] <= threshold))
        self.n_val = len(next(iter(val.values())))
        self.n_outliers = n_outliers
        return self

    # ---------------------------------------------------------------------------------- fingerprint
    def set_fingerprint(self, features) -> None:
        """Store the features of :func:`~dermkit.data.outliers.probe_images` under this encoder."""
        z = _features(features, "probe-image features")
        if self.feature_dim is not None and z.shape[1] != self.feature_dim:
            raise DermkitError(
                f"probe-image features have dimension {z.shape[1]}, the detector was fitted on {self.feature_dim}"
            )
        self.fingerprint = np.ascontiguousarray(z, dtype=np.float32)

    def check_fingerprint(self, features, folder: str | Path | None = None) -> float | None:
        """Refuse (``ModelError``) probe-image features of another encoder; return their mean cosine.

        ``features`` are the current encoder's features of the probe images. Another dimension or
        a mean cosine similarity (row by row) below :data:`MIN_PROBE_COSINE` raises; ``None`` is
        returned when the detector stores no fingerprint (then only the dimension is checked).
        """
        folder = folder if folder is not None else self.folder
        z = _features(features, "probe-image features")
        reference_dim = self.fingerprint.shape[1] if self.fingerprint is not None else self.feature_dim
        if reference_dim is not None and z.shape[1] != reference_dim:
            raise ModelError(self._mismatch(folder, f"feature dimension {z.shape[1]}, fitted on {reference_dim}"))
        if self.fingerprint is None:
            return None
        if len(z) != len(self.fingerprint):
            raise ModelError(self._mismatch(folder, f"{len(z)} probe images given, {len(self.fingerprint)} stored"))
        ref = self.fingerprint.astype(np.float64)
        cur = z.astype(np.float64)
        ref_norm, cur_norm = np.linalg.norm(ref, axis=1), np.linalg.norm(cur, axis=1)
        rows = np.sum(ref * cur, axis=1) / np.maximum(ref_norm * cur_norm, 1e-300)
        # A probe image whose features are zero for both encoders (a small random model can map
        # hash noise to 0) matches; zero for one of them only does not.
        rows[(ref_norm < 1e-12) & (cur_norm < 1e-12)] = 1.0
        cosine = float(np.mean(rows))
        if not cosine >= MIN_PROBE_COSINE:
            raise ModelError(self._mismatch(folder, f"probe-image features differ, cosine {cosine:.4f}"))
        return cosine

    def _mismatch(self, folder, detail: str) -> str:
        where = f" in {folder}" if folder is not None else ""
        return f"the OOD detector{where} was fitted on another encoder ({detail}); {refit_hint(folder)}"

    # ------------------------------------------------------------------------------------------- io
    def save(self, folder: str | Path) -> Path:
        """Write ``ood.safetensors`` and ``ood.json`` into ``folder`` (atomically; tensors first)."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = self._tensors()
        digest = None
        if tensors:
            with atomic_path(folder / OOD_TENSORS) as tmp:
                save_file(tensors, str(tmp), metadata={"format": FORMAT})
                digest = _sha256(tmp)
        card = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "description": self.describe(),
            "scores": list(self.score_names),
            "orientation": "higher = further from the training data; in domain when score <= threshold",
            "default": self.default,
            "thresholds": self.thresholds,
            "acceptance": self.acceptance,
            "val_auroc": self.val_auroc,
            "val_accepted": self.val_accepted,
            "n_val": self.n_val,
            "n_outliers": self.n_outliers,
            "n_train": self.n_train,
            "n_classes": self.n_classes,
            "feature_dim": self.feature_dim,
            "knn_k": self.knn_k,
            "knn_bank_rows": None if self.bank is None else len(self.bank),
            "seed": self.seed,
            "domain": self.domain,
            "fingerprint_probes": None if self.fingerprint is None else len(self.fingerprint),
            "tensors": None if digest is None else {"file": OOD_TENSORS, "sha256": digest},
            "library": {"pytorch-ood": _pytorch_ood_version()},
        }
        write_json(folder / OOD_CARD, card)
        if digest is None and (folder / OOD_TENSORS).exists():
            (folder / OOD_TENSORS).unlink()  # a stale tensor file of an earlier detector
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> OODDetector | None:
        """The detector saved in ``folder``; ``None`` when it has no ``ood.json``.

        A corrupt, incomplete or mismatched pair of files raises ``ModelError`` naming the file.
        """
        folder = Path(folder)
        card_path = folder / OOD_CARD
        if not card_path.is_file():
            return None
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{card_path} is not valid JSON ({exc}); {refit_hint(folder)}") from exc
        if not isinstance(card, dict) or card.get("format") != FORMAT:
            got = card.get("format") if isinstance(card, dict) else type(card).__name__
            raise ModelError(f"{card_path} is not a dermkit OOD detector (format={got!r}); {refit_hint(folder)}")
        if not isinstance(card.get("format_version"), int) or card["format_version"] > FORMAT_VERSION:
            raise ModelError(f"{card_path} has format_version {card.get('format_version')!r}; this dermkit reads "
                             f"up to {FORMAT_VERSION}: update dermkit or {refit_hint(folder)}")
        tensors = _read_tensors(folder, card)
        try:
            detector = cls(
                means=tensors.get("mahalanobis.means"),
                precision=tensors.get("mahalanobis.precision"),
                bank=tensors.get("knn.bank"),
                knn_k=card["knn_k"],
                n_train=card["n_train"],
                n_classes=card["n_classes"],
                seed=card["seed"],
                fingerprint=tensors.get("fingerprint"),
                default=card["default"],
                thresholds=card["thresholds"],
                acceptance=card["acceptance"],
                val_auroc=card["val_auroc"],
                val_accepted=card["val_accepted"],
                n_val=card["n_val"],
                n_outliers=card["n_outliers"],
                folder=folder,
                domain=card.get("domain"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{card_path} is incomplete or invalid ({type(exc).__name__}: {exc}); "
                             f"{refit_hint(folder)}") from exc
        _check_consistent(detector, card, card_path, folder)
        return detector

    def describe(self) -> str:
        """One line for people: the default score and what its threshold does."""
        if self.default is None:
            return f"OOD detector ({', '.join(self.score_names)}), not calibrated yet: no default score or threshold."
        auroc = self.val_auroc.get(self.default)
        against = f"; validation AUROC against outliers {auroc:.3f}" if auroc is not None else ""
        knn = f" (k = {self.knn_k})" if self.default == "knn" else ""
        return (
            f"Default score: {self.default}{knn}, {_DESCRIBE[self.default]}{against}. "
            f"An image is accepted as in-distribution when its score is <= {self.thresholds[self.default]:.6g}, "
            f"which accepts {self.val_accepted[self.default]:.1%} of the {self.n_val} validation images "
            f"(target {self.acceptance:.0%}); higher scores are further from the training data."
        )

    def __repr__(self) -> str:
        return (f"OODDetector(scores={list(self.score_names)}, default={self.default!r}, "
                f"feature_dim={self.feature_dim}, n_train={self.n_train})")

    # -------------------------------------------------------------------------------------- helpers
    def _name(self, name: str | None) -> str:
        name = name or self.default
        if name is None:
            raise ModelError(f"the OOD detector{self._where()} is not calibrated: it has no default score yet")
        if name not in self.score_names:
            raise ModelError(f"unknown OOD score {name!r}; this detector has {', '.join(self.score_names)}")
        return name

    def _where(self) -> str:
        return f" in {self.folder}" if self.folder is not None else ""

    def _check_dim(self, dim: int) -> None:
        if dim != self.feature_dim:
            raise ModelError(self._mismatch(self.folder, f"feature dimension {dim}, fitted on {self.feature_dim}"))

    def _mahalanobis_detector(self):
        if self._mahalanobis is None:
            from pytorch_ood.detector import Mahalanobis

            detector = Mahalanobis(None)
            detector.mu = torch.from_numpy(self.means.astype(np.float64))
            detector.precision = torch.from_numpy(self.precision.astype(np.float64))
            self._mahalanobis = detector
        return self._mahalanobis

    def _knn_detector(self):
        if self._knn is None:
            from pytorch_ood.detector import KNN

            bank = torch.from_numpy(self.bank.astype(np.float64))
            self._knn = KNN(None, k=self.knn_k).fit_features(bank, torch.zeros(len(bank), dtype=torch.long))
        return self._knn

    def _tensors(self) -> dict[str, np.ndarray]:
        tensors = {}
        if self.means is not None:
            tensors["mahalanobis.means"] = self.means
            tensors["mahalanobis.precision"] = self.precision
            tensors["knn.bank"] = self.bank
        if self.fingerprint is not None:
            tensors["fingerprint"] = self.fingerprint
        return tensors


def acceptance_threshold(scores, acceptance: float) -> float:
    """The empirical ``acceptance`` quantile: the k-th smallest score, ``k = ceil(acceptance * n)``.

    ``score <= threshold`` accepts ``k / n`` of ``scores`` (more when others tie with the k-th).
    """
    values = np.sort(np.asarray(scores, dtype=np.float64))
    if values.size == 0:
        raise DermkitError("cannot set an OOD threshold on an empty validation set")
    k = min(values.size, max(1, math.ceil(acceptance * values.size - _TOL)))
    return float(values[k - 1])


# ------------------------------------------------------------------------------------------ metrics
def detection_metrics(id_scores, ood_scores, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """AUROC and FPR at 95% TPR of OOD scores (higher = more OOD), with percentile bootstrap CIs.

    * ``auroc``: OOD images are the positives: the probability that a random OOD image scores
      higher than a random in-distribution (ID) image, ties counting one half (equals
      ``sklearn.metrics.roc_auc_score(is_ood, score)``).
    * ``fpr95``: the detection rule is "accept as in-distribution when ``score <= t``". ``t`` is
      the smallest ID score at which at least 95% of the ID images are accepted (true positive
      rate of the ID images >= 0.95; ``t`` is the k-th smallest ID score, ``k = ceil(0.95 n_id)``);
      ``fpr95`` is the share of OOD images accepted at that ``t``, ``#{ood <= t} / n_ood``. Lower
      is better. This is the convention of Liang et al. (ODIN, 2018) and OpenOOD, with ID as the
      positives of the TPR; pytorch-ood's ``FPR95TPR`` takes OOD as the positives (the share of ID
      images flagged when 95% of OOD are caught) and gives our number when given ``-score`` with
      the ID images labelled as its positives (tested). It is the same rule as
      :meth:`OODDetector.in_domain` at 95% acceptance.

    CIs: ``n_boot`` resamples drawing the ID and the OOD images independently with replacement
    (each set keeps its size), percentile interval at ``level``. Returns ``{"auroc", "fpr95",
    "n_id", "n_ood", "n_boot", "ci": {"auroc": {"low", "high", "level"}, "fpr95": {...}}}``.
    """
    if not 0.0 < level < 1.0:
        raise DermkitError(f"confidence level must be between 0 and 1, got {level}")
    if n_boot < 0:
        raise DermkitError(f"number of bootstrap resamples must be >= 0, got {n_boot}")
    id_scores = _score_vector(id_scores, "in-distribution scores")
    ood_scores = _score_vector(ood_scores, "OOD scores")
    scores = np.concatenate([id_scores, ood_scores])
    is_ood = np.r_[np.zeros(len(id_scores), bool), np.ones(len(ood_scores), bool)]
    blocks = TieBlocks(is_ood, scores)
    auroc, fpr = _detection_from_blocks(*blocks.block_sums(np.ones((1, len(scores)))))
    result = {"auroc": float(auroc[0]), "fpr95": float(fpr[0]), "n_id": len(id_scores), "n_ood": len(ood_scores),
              "n_boot": int(n_boot)}
    samples = {"auroc": np.empty(n_boot), "fpr95": np.empty(n_boot)}
    indices = resample_indices(is_ood.astype(np.int64), n=n_boot, seed=seed)  # stratified: ID, OOD apart
    chunk = max(1, _CHUNK_ELEMENTS // len(scores))
    done = 0
    with quiet():
        while done < n_boot:
            batch = [next(indices) for _ in range(min(chunk, n_boot - done))]
            a, f = _detection_from_blocks(*blocks.block_sums(resample_weights(batch, len(scores))))
            samples["auroc"][done : done + len(batch)] = a
            samples["fpr95"][done : done + len(batch)] = f
            done += len(batch)
    result["ci"] = {name: percentile_ci(values, level) for name, values in samples.items()}
    return result


def _detection_from_blocks(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC (OOD positive) and FPR95 per row from ascending tie blocks (pos = OOD, neg = ID weights)."""
    auroc = auc_from_blocks(pos, neg)
    id_accepted = np.cumsum(neg, axis=1)  # ID weight with score <= each block's score
    ood_accepted = np.cumsum(pos, axis=1)
    n_id, n_ood = id_accepted[:, -1], ood_accepted[:, -1]
    block = np.argmax(id_accepted >= TPR * n_id[:, None] - _TOL, axis=1)
    fpr = ood_accepted[np.arange(len(block)), block] / n_ood
    return auroc, fpr


# ------------------------------------------------------------------------------------------- figure
def plot_score_histograms(scores_by_set: Mapping[str, np.ndarray], threshold: float | None, path: str | Path,
                          title: str | None = None) -> Path:
    """Write :func:`score_histogram_figure` as a PNG."""
    from ..io import save_figure

    return save_figure(path, score_histogram_figure(scores_by_set, threshold, title))


def score_histogram_figure(scores_by_set: Mapping[str, np.ndarray], threshold: float | None,
                           title: str | None = None):
    """The score distribution of each set (e.g. ID test, each outlier dataset), a matplotlib Figure.

    One outlined histogram per set on shared bins, each normalised to its own size (the y axis is
    the share of the set's images), and the threshold as a dashed vertical line with the share of
    each set it accepts in the legend.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from .plots import short_label

    sets = {name: _score_vector(values, f"scores of {name!r}") for name, values in scores_by_set.items()}
    if not sets:
        raise DermkitError("plot_score_histograms needs at least one set of scores")
    everything = np.concatenate(list(sets.values()))
    low, high = float(everything.min()), float(everything.max())
    if threshold is not None:
        low, high = min(low, threshold), max(high, threshold)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    bins = np.linspace(low, high, 41)

    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    colours = colormaps["tab10"]
    for k, (name, values) in enumerate(sets.items()):
        label = f"{short_label(name)} (n={len(values)})"
        if threshold is not None:
            label += f", {np.mean(values <= threshold):.0%} accepted"
        weights = np.full(len(values), 1.0 / len(values))
        ax.hist(values, bins=bins, weights=weights, histtype="stepfilled", alpha=0.25, color=colours(k % 10))
        ax.hist(values, bins=bins, weights=weights, histtype="step", lw=1.6, color=colours(k % 10), label=label)
    if threshold is not None:
        ax.axvline(threshold, ls="--", color="#c44e52", lw=1.4, label=f"Threshold {threshold:.4g}")
    ax.grid(alpha=0.3)
    ax.set_xlabel("OOD score (higher = further from the training data)")
    ax.set_ylabel("Share of the set's images")
    ax.set_title(title or "Out-of-distribution scores")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return fig


def detection_summary(id_scores: Mapping[str, np.ndarray], ood_sets: Mapping[str, Mapping[str, np.ndarray]],
                      default: str, threshold: float, *, id_name: str = "in-distribution test",
                      n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Every score's :func:`detection_metrics` of the in-distribution images against each other
    set, and the share of each set the detector's default threshold accepts (JSON-ready)."""
    default_id = _score_vector(id_scores[default], f"{id_name} scores")
    sets = {}
    for name, scores in ood_sets.items():
        values = _score_vector(scores[default], f"scores of {name!r}")
        sets[name] = {"n": int(len(values)), "accepted": float(np.mean(values <= threshold)),
                      "scores": {score: detection_metrics(id_scores[score], scores[score], n_boot=n_boot, seed=seed,
                                                          level=level)
                                 for score in SCORES if score in scores and score in id_scores}}
    return {"id": id_name, "n_id": int(len(default_id)), "default": default, "threshold": float(threshold),
            "id_accepted": float(np.mean(default_id <= threshold)), "sets": sets,
            "how": "AUROC: OOD images positive (higher score = more OOD); FPR95: share of the other set accepted "
                   "when 95% of the in-distribution images are; percentile bootstrap CIs, each set resampled "
                   "on its own"}


# ---------------------------------------------------------------------------------------- internals
def _fit_mahalanobis(z: np.ndarray, codes: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the Ledoit-Wolf shrinkage precision of the class-centred features."""
    from scipy.linalg import cho_factor, cho_solve
    from sklearn.covariance import LedoitWolf

    z = z.astype(np.float64)
    means = np.stack([z[codes == c].mean(axis=0) for c in range(n_classes)])
    centred = z - means[codes]
    with quiet():  # store_precision=False: scikit-learn's pinvh (an eigendecomposition) is ~40x slower
        covariance = LedoitWolf(assume_centered=True, store_precision=False).fit(centred).covariance_
    try:  # shrinkage towards a multiple of the identity makes the estimate positive definite
        factor = cho_factor(covariance, lower=True)
        precision = cho_solve(factor, np.eye(len(covariance)))
    except np.linalg.LinAlgError:
        precision = np.full_like(covariance, np.nan)
    if not np.all(np.isfinite(precision)):
        raise DermkitError("the training features give no invertible covariance estimate (are they all identical?)")
    precision = (precision + precision.T) / 2
    return means.astype(np.float32), precision.astype(np.float32)


def _knn_bank(z: np.ndarray, codes: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """L2-normalised training features in float16, at most ``rows`` of them (class-stratified subsample)."""
    if rows < 1:
        raise DermkitError(f"the kNN bank needs at least 1 row, got {rows}")
    keep = np.arange(len(z))
    if len(z) > rows:
        rng = np.random.default_rng(seed)
        counts = np.bincount(codes)
        quota = _stratified_quota(counts, rows)
        keep = np.sort(np.concatenate([
            rng.choice(np.flatnonzero(codes == c), size=quota[c], replace=False) for c in range(len(counts))
        ]))
    bank = z[keep].astype(np.float64)
    bank /= np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    return bank.astype(np.float16)


def _stratified_quota(counts: np.ndarray, rows: int) -> np.ndarray:
    """Rows per class proportional to its count (largest remainders), every class at least one row."""
    share = counts * rows / counts.sum()
    quota = np.minimum(counts, np.maximum(1, np.floor(share).astype(np.int64)))
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    while quota.sum() < rows:
        for c in order:
            if quota.sum() >= rows:
                break
            if quota[c] < counts[c]:
                quota[c] += 1
    while quota.sum() > rows:  # the at-least-one rule overshot: trim the largest classes
        quota[int(np.argmax(quota))] -= 1
    return quota


def _msp(p: np.ndarray) -> np.ndarray:
    from pytorch_ood.detector import MaxSoftmax

    with np.errstate(divide="ignore"):
        log_p = torch.from_numpy(np.log(p))  # softmax(log p) = p / sum(p): MaxSoftmax gives -max p
    return (1.0 + MaxSoftmax.score(log_p)).numpy().astype(np.float64)


def _auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    scores = np.concatenate([id_scores, ood_scores])
    is_ood = np.r_[np.zeros(len(id_scores), bool), np.ones(len(ood_scores), bool)]
    pos, neg = TieBlocks(is_ood, scores).block_sums(np.ones((1, len(scores))))
    return float(auc_from_blocks(pos, neg)[0])


def _rounded(value: float) -> float:
    return round(float(value), 12) if np.isfinite(value) else -1.0


def _features(features, what: str) -> np.ndarray:
    z = np.asarray(features)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise DermkitError(f"{what} must be a non-empty (N, D) array, got shape {z.shape}")
    if not np.issubdtype(z.dtype, np.number):
        raise DermkitError(f"{what} must be numbers, got dtype {z.dtype}")
    if not np.all(np.isfinite(z)):
        row = int(np.flatnonzero(~np.isfinite(z).all(axis=1))[0]) + 1
        raise DermkitError(f"{what} contain NaN or infinite values (row {row})")
    return z


def _probabilities(probabilities) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise DermkitError(f"probabilities must be a non-empty (N, classes) array, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or (p < 0).any() or not (p.sum(axis=1) > 0).all():
        raise DermkitError("probabilities must be finite, non-negative, and positive in every row")
    return p


def _score_vector(values, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise DermkitError(f"{what} are empty")
    if not np.all(np.isfinite(v)):
        raise DermkitError(f"{what} contain NaN or infinite values")
    return v


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_tensors(folder: Path, card: dict) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    entry = card.get("tensors")
    if entry is None:
        return {}
    path = folder / OOD_TENSORS
    if not path.is_file():
        raise ModelError(f"{path} is missing ({folder / OOD_CARD} refers to it); {refit_hint(folder)}")
    if not isinstance(entry, dict) or _sha256(path) != entry.get("sha256"):
        raise ModelError(f"{path} does not match {folder / OOD_CARD} (SHA-256 differs: a partial copy or an "
                         f"interrupted save); {refit_hint(folder)}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path} is not a readable safetensors file ({exc}); {refit_hint(folder)}") from exc


def _check_consistent(detector: OODDetector, card: dict, card_path: Path, folder: Path) -> None:
    problems = []
    if (detector.means is None) != (card.get("feature_dim") is None):
        problems.append("feature tensors and feature_dim disagree")
    if detector.means is not None:
        d = detector.feature_dim
        if d != card.get("feature_dim"):
            problems.append(f"class means have dimension {d}, ood.json says {card.get('feature_dim')}")
        if detector.precision is None or detector.precision.shape != (d, d):
            problems.append("the precision matrix is missing or not D x D")
        if detector.bank is None or detector.bank.ndim != 2 or detector.bank.shape[1] != d:
            problems.append("the kNN bank is missing or has another dimension")
        elif not detector.knn_k or not 1 <= detector.knn_k <= len(detector.bank):
            problems.append(f"knn_k {detector.knn_k} does not fit a bank of {len(detector.bank)} rows")
    if detector.fingerprint is not None and detector.fingerprint.ndim != 2:
        problems.append("the fingerprint is not a (probes, D) matrix")
    if detector.default is not None and (detector.default not in detector.score_names
                                         or detector.default not in detector.thresholds):
        problems.append(f"default score {detector.default!r} has no threshold")
    if problems:
        raise ModelError(f"{card_path} and {OOD_TENSORS} are inconsistent ({'; '.join(problems)}); "
                         f"{refit_hint(folder)}")


def _pytorch_ood_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytorch-ood")
    except PackageNotFoundError:  # pragma: no cover
        return None
