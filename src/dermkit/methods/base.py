"""The method contract: a registry of methods, the Predictor every method returns, Predictions.

A method is one file in ``dermkit/methods/`` that registers itself::

    @register_method
    class ZeroShot(Method):
        name = "zeroshot"
        config_class = ZeroShotConfig          # a dataclass; from_dict/validate come from the base

        def fit(self, config, run) -> Predictor: ...   # train on run.card(), select on val
        def load(self, folder, device="auto") -> Predictor: ...

``dermkit run`` / ``dermkit suite`` / ``dermkit.run`` look the method up here by the config's
``method:``; :func:`dermkit.methods.load_predictor` looks it up by the ``method`` a model folder's ``model.json``
names, so every method's output loads with ``dermkit predict`` / ``dermkit evaluate --model``.
The :class:`~dermkit.experiment.Run` handed to ``fit`` owns the bookkeeping (config snapshot,
best-model save, test and transfer reports, summary.json); a method only trains and predicts.

Methods never import each other: what two methods share lives below them (``engine``,
``models``, ``data``, ``evaluate``) or here.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd

from dermkit.config import config_from_dict
from dermkit.data.card import DatasetCard, load_card
from dermkit.data.images import as_path
from dermkit.data.split import row_groups
from dermkit.data.tasks import derive_task
from dermkit.engine.features import extract_features
from dermkit.errors import ConfigError, DataError, ModelError
from dermkit.evaluate.calibration import apply_offsets, apply_temperature
from dermkit.evaluate.predictions import predictions_frame
from dermkit.io import replace_dir
from dermkit.models.checkpoint import (
    FORMAT,
    MODEL_CARD,
    MODEL_WEIGHTS,
    load_tensors,
    read_model_card,
    save_tensors,
    write_model_card,
)
from dermkit.models.encoders import load_encoder, save_open_clip_folder
from dermkit.models.explain import encoder_saliency
from dermkit.models.specs import parse_spec
from dermkit.models.text import zeroshot_proba

__all__ = [
    "METHODS",
    "Method",
    "Predictor",
    "Predictions",
    "ClassifierConfig",
    "register_method",
    "write_model_folder",
    "portable_spec",
    "load_base_encoder",
    "EncoderHeadPredictor",
    "ClassEmbeddingPredictor",
    "Recalibrated",
    "DatasetResult",
    "scratch_feature_cache",
]

METHODS: dict[str, "Method"] = {}


# ------------------------------------------------------------------------------ configs


@dataclass
class ClassifierConfig:
    """Keys every classifying method shares (the Run reads them).

    ``data``: dataset name or folder (train/val/test splits); ``task``: ``all`` (the card's
    classes), ``melanoma_vs_rest`` or ``binary:CLASS`` (see :mod:`dermkit.data.tasks`);
    ``negative_name``: readable name of a binary task's negative class; ``eval_data``: more
    datasets whose test splits the selected model is also reported on (transfer tests);
    ``n_bootstrap``: resamples of the 95% CIs; ``calibrate: temperature``: after training, fit one
    temperature on the val split by NLL; ``decision: balanced``: fit per-class decision offsets on
    the val split for balanced accuracy; both are applied to every prediction of the saved model
    (:class:`Recalibrated`). ``ood_acceptance``: when training ends, an out-of-distribution detector
    is fitted on the train split's image features and its threshold set to accept this share of the
    val split (:mod:`dermkit.methods.ood`); null fits none.
    """

    data: str = "ham10000"
    task: str | None = None
    negative_name: str = "other skin lesion"
    eval_data: list[str] = field(default_factory=list)
    n_bootstrap: int = 1000
    calibrate: str | None = None  # None | temperature
    decision: str | None = None  # None | balanced (per-class thresholds tuned on val for balanced accuracy)
    ood_acceptance: float | None = 0.95  # the OOD detector accepts this share of val; null: fit none

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config"):
        raw = dict(raw or {})
        if isinstance(raw.get("eval_data"), str):  # "ph2,isic2017" from a command line
            raw["eval_data"] = [d.strip() for d in raw["eval_data"].split(",") if d.strip()]
        return config_from_dict(cls, raw, where)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.validate()
        if self.n_bootstrap < 0:
            raise ConfigError(f"n_bootstrap must be >= 0, got {self.n_bootstrap}")
        if self.calibrate not in (None, "", "none", "temperature"):
            raise ConfigError(f"calibrate must be temperature (or null: none), got {self.calibrate!r}")
        if self.decision not in (None, "", "none", "argmax", "balanced"):
            raise ConfigError(f"decision must be balanced (thresholds tuned on val) or null (argmax), got "
                              f"{self.decision!r}")
        if self.ood_acceptance is not None and not 0.5 <= self.ood_acceptance <= 1.0:
            raise ConfigError("ood_acceptance must be between 0.5 and 1 (the share of val images the out-of-"
                              f"distribution detector accepts), or null for no detector; got {self.ood_acceptance}")
        if (self.task not in (None, "", "all", "melanoma_vs_rest", "positive_vs_rest")
                and not str(self.task).startswith("binary:")):
            raise ConfigError(f"task must be all, melanoma_vs_rest or binary:CLASS, got {self.task!r}")

    def model_specs(self) -> dict[str, str]:
        """Config keys that name a model (``key -> spec``), checked by ``dermkit run --check``."""
        return {k: getattr(self, k) for k in ("model",) if isinstance(getattr(self, k, None), str)}


# ------------------------------------------------------------------------------ predictions


@dataclass
class Predictions:
    """What a predictor returns: one row per image (``ids``), probabilities over ``classes``.

    A model with a Breslow thickness head adds its predicted ``thickness`` (a column of
    :meth:`frame`) and, for the rows of a dataset that holds the model's thickness target,
    ``thickness_target`` (the true value, NaN where a row has none; not a column of the frame):
    the :class:`~dermkit.experiment.Run` scores the two in its test report.
    """

    ids: list[str]
    proba: np.ndarray
    classes: list[str]
    targets: list[str] | None = None
    groups: list[str] | None = None
    thickness: np.ndarray | None = None
    thickness_target: np.ndarray | None = None

    def frame(self) -> pd.DataFrame:
        """The evaluation layer's predictions table (see :mod:`dermkit.evaluate.predictions`)."""
        frame = predictions_frame(self.ids, self.proba, self.classes, self.targets, self.groups)
        if self.thickness is not None:
            frame["thickness"] = np.asarray(self.thickness)
        return frame

    def subset(self, keep) -> "Predictions":
        """The rows where ``keep`` (one bool per row) is true."""
        keep = np.asarray(keep, dtype=bool)

        def pick(values):
            return None if values is None else [v for v, k in zip(values, keep) if k]

        def pick_array(values):
            return None if values is None else np.asarray(values)[keep]

        return Predictions(pick(self.ids), self.proba[keep], self.classes, pick(self.targets), pick(self.groups),
                           pick_array(self.thickness), pick_array(self.thickness_target))


class Predictor:
    """A trained classifier: ``classes``, ``model_card`` (its model.json, a dict), ``predict``, ``save``.

    Subclasses implement :meth:`predict_paths` (images -> (N, C) probabilities) and
    :meth:`_state` (tensors + the JSON model card written by :meth:`save`). A predictor that predicts more
    than a class (a thickness, the modalities a fusion model used) also has
    ``predict_details(paths) -> list[dict]``.
    """

    method: str = ""
    #: Whether a run fits an out-of-distribution detector for it (:mod:`dermkit.methods.ood`).
    fits_ood: ClassVar[bool] = True
    #: The detector (:class:`dermkit.evaluate.ood.OODDetector`) and why there is none, when none.
    ood = None
    ood_note: str = ""

    def __init__(self, model_card: dict[str, Any]):
        self.model_card = dict(model_card)
        self.classes: list[str] = list(model_card["classes"])

    # -- what each method implements
    def predict_paths(self, paths: Sequence[str | os.PathLike], progress: bool = False) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(tensors, card)`` to save: safetensors-able tensors and a JSON-able card."""
        raise NotImplementedError

    def image_features(self, paths: Sequence[str | os.PathLike], progress: bool = False) -> np.ndarray | None:
        """``(N, D)`` features of the model's image tower for its out-of-distribution detector
        (:mod:`dermkit.methods.ood`), or None when the model has none (the detector then has only
        the max-softmax score). Overridden by every predictor with an image tower."""
        return None

    def saliency_module(self):
        """What Grad-CAM needs to explain a prediction (a :class:`dermkit.models.explain.SaliencyModule`:
        pixels -> logits module, preprocessing, target layers, ViT token reshape), or None when the
        model has no image tower to explain (the default; fusion, concept bottlenecks)."""
        return None

    # -- shared
    @property
    def name(self) -> str:
        return str(self.model_card.get("model") or self.method)

    @property
    def task(self) -> str | None:
        return self.model_card.get("task")

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the model folder (model.safetensors + model.json) atomically."""
        tensors, card = self._state()
        return write_model_folder(folder, tensors, {**card, "method": self.method, "classes": self.classes})

    def task_card(self, card):
        """``card`` relabelled for this model's task, checked against its classes."""
        card = load_card(card)
        task = self.task
        if task not in (None, "", "all") and card.classes != self.classes:
            card = derive_task(card, task, negative_name=self.model_card.get("negative_name", "other skin lesion"))
        return card

    def predict_split(self, card, split: str = "test", progress: bool = True,
                      keep_excluded: bool = False) -> pd.DataFrame:
        """The evaluation layer's predictions table for one split of a dataset card."""
        return self.predict(card, split=split, progress=progress, keep_excluded=keep_excluded).frame()

    def predict(self, images, split: str = "test", progress: bool = False, keep_excluded: bool = False) -> Predictions:
        """Predictions for image paths, or for ``split`` of a dataset (a card, name or folder);
        ``keep_excluded``: also the rows the card's exclusion list leaves out (the full split)."""
        is_dataset = isinstance(images, DatasetCard) or (
            isinstance(images, (str, os.PathLike)) and not Path(images).is_file())
        if not is_dataset:
            paths = [images] if isinstance(images, (str, os.PathLike)) else list(images)
            return Predictions([str(p) for p in paths], self.predict_paths(paths, progress=progress), self.classes)
        card = self.task_card(images)
        rows = card.rows(split, keep_excluded=keep_excluded)
        targets = rows["diagnosis"]
        unknown = sorted(set(targets.dropna()) - set(self.classes))
        if unknown:
            raise DataError(f"split {split!r} of {card.name} has classes the model was not trained on: {unknown}. "
                            f"The model knows {self.classes}" + (f" (task {self.task})" if self.task else "") + ".")
        return self._predict_rows(card, rows, row_groups(rows, card.group_column), progress)

    def _predict_rows(self, card, rows: pd.DataFrame, groups, progress: bool) -> Predictions:
        paths = [card.image_path(p) for p in rows["image"]]
        proba = self.predict_paths(paths, progress=progress)
        return Predictions(rows["image"].tolist(), proba, self.classes, rows["diagnosis"].tolist(), groups)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, classes={self.classes})"


@dataclass
class DatasetResult:
    """One dataset's evaluation by a method's multi-dataset command (``dermkit zeroshot`` / ``probe``):
    the ``predictor`` (saved in ``folder/model``), the evaluation ``report`` saved in ``folder`` and
    its ``predictions`` table, the command's table ``rows`` for this dataset, and the method's own
    ``summary.json`` fields (the :class:`~dermkit.experiment.Run` writes the shared ones)."""

    predictor: "Predictor"
    report: Any
    predictions: pd.DataFrame
    folder: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


@contextmanager
def scratch_feature_cache(predictor: "Predictor", folder: str | os.PathLike):
    """Within the block, a predictor that caches image features (``cache_dir``) caches them in
    ``folder``: images made on the fly (probe images, stress-test copies, uploads) leave nothing in
    the user's feature cache."""
    target = getattr(predictor, "inner", predictor)  # a Recalibrated model's own predictor
    if "cache_dir" not in vars(target):
        yield predictor
        return
    saved, target.cache_dir = target.cache_dir, str(Path(folder) / "features")
    try:
        yield predictor
    finally:
        target.cache_dir = saved


# ------------------------------------------------------------------------------ methods


class Method:
    """One way of turning a model and a dataset into a :class:`Predictor`."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = ClassifierConfig
    description: ClassVar[str] = ""
    # The smallest config that exercises the method end to end (seconds on a CPU), used by the
    # method-contract test for every registered method: "{data}" is a small dataset folder,
    # "{clip}" a small open_clip folder (also a valid image encoder), "{sae}" a trained SAE folder,
    # "{vlm}" a small generative VLM folder (llava-hf layout).
    tiny_config: ClassVar[dict[str, Any]] = {}
    # The model.json fields (name -> type or tuple of types) beyond those every folder has (format,
    # format_version, classes) that ``load`` reads: checked by ``load_predictor`` before it dispatches,
    # so a damaged or hand-edited folder is one clear ModelError, not a KeyError deep in ``load``.
    card_fields: ClassVar[dict[str, Any]] = {}

    def config(self, raw: dict[str, Any], where: str = "config"):
        """The validated config dataclass for ``raw`` (without ``method``/``name``)."""
        config = self.config_class.from_dict(raw, where) if _takes_where(self.config_class) else \
            self.config_class.from_dict(raw)
        try:
            config.validate()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return config

    def fit(self, config, run) -> Predictor:
        """Train on ``run.card()`` train, select on val; save the best with ``run.save_best``."""
        raise NotImplementedError

    def load(self, folder: str | os.PathLike, device: str = "auto") -> Predictor:
        raise NotImplementedError

    def check(self, config) -> list[str]:
        """Cheap checks beyond the config's own ``validate`` (no training, no model download).

        Returns warnings; raises DermkitError for what would fail. The default checks that the
        datasets exist and load (a data folder that does not exist is refused exactly as the run
        refuses it: a config is checked against the data it names, so check it after the step that
        writes that data, e.g. `dermkit concepts bias-data`) and that every model spec parses.
        """
        warnings = []
        for key in ("data", "eval_data", "extra_data"):
            value = getattr(config, key, None)
            for name in [value] if isinstance(value, str) else list(value or []):
                load_card(name)
        specs = config.model_specs() if hasattr(config, "model_specs") else {}
        for key, spec in specs.items():
            ref = parse_spec(spec)
            if ref.kind in ("folder", "local-dir") and not Path(ref.path).expanduser().exists():
                warnings.append(f"{key}: {spec} does not exist yet; it must exist when the run starts")
        return warnings


def _takes_where(cls) -> bool:
    try:
        return "where" in inspect.signature(cls.from_dict).parameters
    except (TypeError, ValueError):
        return False


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method to the registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a `name`")
    if cls.name in METHODS and type(METHODS[cls.name]) is not cls:
        raise TypeError(f"method {cls.name!r} is registered twice ({type(METHODS[cls.name]).__name__}, {cls.__name__})")
    METHODS[cls.name] = cls()
    return cls


class Recalibrated(Predictor):
    """A predictor whose probabilities are recalibrated after training, in log space:
    ``softmax(log p / T + b)``: one temperature ``T`` (``calibrate: temperature``, fitted on val by
    NLL; the argmax never changes) and per-class offsets ``b`` (``decision: balanced``, fitted on val
    for balanced accuracy: decision thresholds). Both are stored in the model folder's ``model.json``
    (``temperature``, ``class_offsets``), so :func:`load_predictor` returns the recalibrated model.
    Everything else (saliency maps, details, a fusion model's extra inputs) is the wrapped predictor's.
    """

    def __init__(self, inner: Predictor, temperature: float | None = None, offsets: Sequence[float] | None = None):
        if temperature is not None and not (np.isfinite(temperature) and temperature > 0):
            raise ModelError(f"temperature must be a positive number, got {temperature}")
        if offsets is not None and len(offsets) != len(inner.classes):
            raise ModelError(f"class_offsets must have one number per class ({len(inner.classes)}), got {len(offsets)}")
        inner.model_card["temperature"] = None if temperature is None else float(temperature)
        inner.model_card["class_offsets"] = None if offsets is None else [float(b) for b in offsets]
        super().__init__(inner.model_card)
        self.inner = inner
        self.temperature = None if temperature is None else float(temperature)
        self.offsets = None if offsets is None else np.asarray(offsets, dtype=float)
        self.method = inner.method

    def recalibrate(self, proba: np.ndarray) -> np.ndarray:
        if self.temperature is not None:
            proba = apply_temperature(proba, self.temperature)
        if self.offsets is not None:
            proba = apply_offsets(proba, self.offsets)
        return proba

    def predict_paths(self, paths, progress: bool = False) -> np.ndarray:
        return self.recalibrate(self.inner.predict_paths(paths, progress=progress))

    def image_features(self, paths, progress: bool = False) -> np.ndarray | None:
        return self.inner.image_features(paths, progress=progress)

    def _predict_rows(self, card, rows: pd.DataFrame, groups, progress: bool) -> Predictions:
        preds = self.inner._predict_rows(card, rows, groups, progress)  # e.g. fusion reads each row's metadata
        preds.proba = self.recalibrate(preds.proba)
        return preds

    def save(self, folder: str | os.PathLike) -> Path:
        self.inner.model_card["temperature"] = self.temperature
        self.inner.model_card["class_offsets"] = None if self.offsets is None else self.offsets.tolist()
        return self.inner.save(folder)

    def task_card(self, card):
        return self.inner.task_card(card)

    def saliency_module(self):
        return self.inner.saliency_module()

    def __getattr__(self, name: str):  # the wrapped predictor's own extras (predict_details, enc, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


# ------------------------------------------------------------------------------ helpers for methods


def write_model_folder(folder: str | os.PathLike, tensors: dict[str, Any], card: dict[str, Any]) -> Path:
    """Atomically (re)write a model folder: ``model.safetensors`` + ``model.json``.

    Written into ``FOLDER.partial`` and swapped into place, so a reader never sees a half-written
    model, and a folder that already holds other files (an open_clip model) keeps them.
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    if folder.is_dir():
        shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns(MODEL_WEIGHTS, MODEL_CARD))
    tmp.mkdir(parents=True, exist_ok=True)
    save_tensors(tmp / MODEL_WEIGHTS, tensors, metadata={"format": FORMAT})
    write_model_card(tmp, card)  # sealed: the weights' digest and the fields that give them meaning
    replace_dir(tmp, folder)
    return folder


def portable_spec(spec: str) -> str:
    """A model spec as saved in a model folder: local folders as absolute paths, others as given."""
    ref = parse_spec(spec)
    if ref.kind in ("folder", "local-dir") and Path(ref.path).expanduser().exists():
        return str(Path(ref.path).expanduser().resolve())
    return spec


def load_base_encoder(spec: str, fingerprint: str | None, folder: str | os.PathLike, device: str = "cpu",
                      relative_to: str | os.PathLike | None = None):
    """The frozen encoder a saved head was trained on, checked by fingerprint.

    ``spec`` ``"."`` means the model folder itself (a CLIP folder that also holds its zero-shot
    head). A missing or changed base model is a clear ModelError naming ``model.json``.
    """
    folder = Path(folder)
    source = str(folder) if spec == "." else spec
    try:
        enc = load_encoder(source, device=device)
    except ModelError as exc:
        raise ModelError(f"{folder} was trained on the base model {spec!r}, which cannot be loaded ({exc}). "
                         f"Put the base model back there, or edit base_model in {folder / 'model.json'} to where "
                         "it is now.") from exc
    if fingerprint and enc.fingerprint != fingerprint:
        raise ModelError(f"the base model at {source} has changed since {folder} was trained (fingerprint "
                         f"{enc.fingerprint} != {fingerprint}); the saved head only fits the original weights")
    return enc


# ------------------------------------------------------------------------------ predictors on frozen encoders


class EncoderHeadPredictor(Predictor):
    """A frozen encoder + a head on its L2-normalised image embeddings (read from the feature cache).

    Subclasses implement :meth:`head` (embeddings -> probabilities). ``model_card`` names the encoder
    (``base_model``: spec, or ``"."`` for the model folder itself) and its ``base_fingerprint``.
    """

    def __init__(self, enc, model_card: dict, cache_dir=None, batch_size: int = 64, num_workers: int = 2):
        super().__init__(model_card)
        self.enc = enc
        self.cache_dir, self.batch_size, self.num_workers = cache_dir, batch_size, num_workers

    def head(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def saliency_logits(self, embeddings):
        """:meth:`head` in torch (``(N, D)`` L2-normalised embeddings -> ``(N, C)`` logits), for
        Grad-CAM; heads that implement it get :meth:`saliency_module` for free."""
        raise NotImplementedError

    def saliency_module(self):
        if type(self).saliency_logits is EncoderHeadPredictor.saliency_logits:
            return None
        return encoder_saliency(self.enc, self.saliency_logits)

    def save(self, folder: str | os.PathLike) -> Path:
        """As :meth:`Predictor.save`; a head whose encoder is its own folder (``base_model: "."``, a
        trained CLIP model) takes the encoder's open_clip files along to the new folder."""
        folder = Path(folder)
        if self.model_card.get("base_model") == "." and not (folder / "open_clip_config.json").is_file():
            save_open_clip_folder(self.enc.module, folder, self.enc.model_cfg, self.enc.preprocess_cfg)
        return super().save(folder)

    def predict_paths(self, paths, progress: bool = False) -> np.ndarray:
        return self.head(self.image_features(paths, progress=progress))

    def image_features(self, paths, progress: bool = False) -> np.ndarray:
        """The frozen encoder's L2-normalised embeddings (from the feature cache)."""
        return extract_features(self.enc, [as_path(p) for p in paths], cache_dir=self.cache_dir,
                                batch_size=self.batch_size, num_workers=self.num_workers, progress=progress)

    @staticmethod
    def read(folder, device: str = "auto"):
        """``(encoder, card, tensors)`` of a saved encoder-head folder, the encoder checked by fingerprint."""
        card = read_model_card(folder)
        enc = load_base_encoder(card["base_model"], card.get("base_fingerprint"), folder,
                                device="cpu" if device == "auto" else device)
        return enc, card, load_tensors(Path(folder) / MODEL_WEIGHTS)


class ClassEmbeddingPredictor(EncoderHeadPredictor):
    """Zero-shot head: softmax of ``logit_scale * cosine(image, class embedding)``."""

    method = "zeroshot"

    def __init__(self, enc, class_emb, model_card: dict, **kwargs):
        super().__init__(enc, model_card, **kwargs)
        if class_emb.shape[0] != len(self.classes):
            raise ModelError(f"{class_emb.shape[0]} class embeddings but {len(self.classes)} class names "
                             f"{self.classes[:8]}; the classes do not fit the weights (model.json edited?). "
                             "Restore model.json, or retrain.")
        self.class_emb = class_emb.float().cpu()
        self.logit_scale = float(model_card.get("logit_scale") or enc.logit_scale)

    def _state(self):
        return {"class_embeddings": self.class_emb}, self.model_card

    def head(self, features: np.ndarray) -> np.ndarray:
        return zeroshot_proba(features, self.class_emb, self.logit_scale)

    def saliency_logits(self, embeddings):
        return self.logit_scale * embeddings @ self.class_emb.to(embeddings).T

    @classmethod
    def from_folder(cls, folder, device: str = "auto"):
        enc, card, tensors = cls.read(folder, device)
        return cls(enc, tensors["class_embeddings"], card)
