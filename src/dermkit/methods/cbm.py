"""Concept-bottleneck classifier on sparse-autoencoder latents: ``method: cbm`` (PanDerm-2's concept
discovery, step 2), with concept names, explanations and intervention.

The bottleneck is a trained SAE (a ``method: sae`` run's model folder, ``sae:``): every image's
frozen-encoder embedding becomes its SAE latent activations (the "concepts"). A sparse (L1)
logistic regression over them (C chosen on val by balanced accuracy; fitted full-batch by FISTA in
torch, the objective of scikit-learn's L1 ``LogisticRegression``, which ``solver: saga`` uses
instead) chooses the concepts, so only some latents carry weight (PanDerm-2 uses
``SGDClassifier(log_loss, l1)``; the same model family, with dermkit's C-on-val selection). By
default the weights are then refitted on those concepts alone with an L2 penalty (``refit_Cs``: the
relaxed lasso), which keeps the same concepts and removes the L1 shrinkage that cost the head
ranking quality (macro-AUC); ``refit_Cs: null`` keeps PanDerm-2's plain L1 weights. When the encoder is a
vision-language model, the latents with non-zero weight are named after the fact: each latent's
decoder atom is matched one-to-one to a concept vocabulary embedded by the text tower (Hungarian
algorithm; :mod:`dermkit.models.concepts`).

The predictor explains each prediction by its top concept contributions (standardised activation
x weight for the predicted class), and ``with_zeroed(latents)`` returns the same classifier with
those latents switched off: PanDerm-2's intervention on artefact concepts (``dermkit concepts
intervene``). ``ablation="zero"`` (PanDerm-2's) sets their activations to zero; ``"mean"`` sets them
to their mean on the CBM's training data (the head's standardisation mean), so their contribution is
zero for every image and the decision threshold keeps its meaning. Both rank images alike (the
difference is one constant shift of the logits): AUROC is the same, balanced accuracy is not.

Concepts learned from examples (``example_concepts:``, a folder written by ``dermkit concepts
learn`` or the bias experiment; :class:`dermkit.models.concepts.ExampleConcepts`) join the
discovered ones: the bottleneck is then the projections of the embedding on their vectors (named,
ids ``n_latents, n_latents + 1, ...``) and the SAE's latents of the embedding with those vectors'
span taken out, so a learned concept is the only way its direction reaches the head and switching it
off removes that direction (a post-hoc CBM's concept activation vectors, Yuksekgonul et al. 2023,
next to discovered ones). The L1 head chooses among all of them alike.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Sequence

import numpy as np

from dermkit import io
from dermkit.data.card import load_card
from dermkit.data.images import open_image
from dermkit.data.split import row_groups
from dermkit.engine.features import extract_features, extract_split_features
from dermkit.errors import ConfigError, DataError, ModelError, excerpt
from dermkit.evaluate import evaluate
from dermkit.evaluate.concepts import (
    BEST_LATENT_NOTE,
    best_latents,
    concept_annotations,
    concept_validity,
    name_by_annotations,
    validity_matrix,
)
from dermkit.methods.base import ClassifierConfig, EncoderHeadPredictor, Method, register_method
from dermkit.models.concepts import (
    QUERY_MIN_SIMILARITY,
    ExampleConcepts,
    Vocabulary,
    concept_direction,
    load_example_concepts,
    load_vocabulary,
    name_latents,
    nearest_latents,
    vocabulary_embeddings,
)
from dermkit.models.linear import L1_SOLVERS, LinearProbe, check_probe_settings, fit_probe
from dermkit.models.sae import SparseAutoencoder
from dermkit.models.text import encode_texts

__all__ = ["ABLATIONS", "PRESENT_VALUES", "CBMConfig", "CBMPredictor", "ConceptBottleneck", "concept_bank",
           "concept_gallery", "learn_concepts", "load_sae_folder",
           "order_by_validity", "validity_tables"]

_PROBE = ("coef", "intercept", "mean", "scale")
NAMING = ("text", "annotations", "both")
#: How an intervention switches a concept off: its activation set to zero (PanDerm-2) or to its training mean.
ABLATIONS = ("zero", "mean")
_NAME_KEYS = ("name", "group", "similarity", "best_similarity", "margin", "candidate", "unnamed")


@dataclass
class CBMConfig(ClassifierConfig):
    """``sae``: the model folder of a ``method: sae`` run (its encoder and SAE are reused, frozen);
    ``Cs``: inverse L1 strengths tried on val (smaller = fewer concepts); ``refit_Cs``: inverse L2
    strengths of the relaxed-lasso refit on each C's concepts (the pair chosen on val; null: plain L1
    weights, as PanDerm-2); ``vocabulary``: a file that
    extends the packaged concept vocabulary; ``name_concepts``: name the non-zero latents (needs a
    vision-language encoder); ``min_name_margin``: a latent keeps its name only when its cosine
    similarity to that name exceeds its similarity to every other name by at least this much (default
    0.01: CLIP text embeddings of related concepts sit close together, and a latent whose direction
    is within 0.01 of two names does not say which it is); ``min_name_similarity``: and only when
    its similarity to the name is at least this (default 0: a direction pointing away from a name
    never takes it). Unnamed latents are shown as "latent N".

    ``naming``: where names come from. ``text``: the text tower only (above). ``annotations``: the
    concept annotations of a labelled dataset's val split (``name_data``, default the CBM's own
    dataset; Derm7pt's 7-point criteria, PH2's structures, a card's ``concept_annotations``):
    latents and annotations paired one-to-one by val AUROC (Hungarian), a name kept when its val
    AUROC is at least ``min_name_auroc`` and its 95% CI lies above 0.5 (Network Dissection's
    idea; :func:`dermkit.evaluate.concepts.name_by_annotations`). ``both`` (default): annotation
    names first, the text tower names the rest from the names not taken. A dataset without
    annotations leaves every latent to the text tower. Names chosen on val are checked on test by
    ``dermkit concepts show`` (validity).

    ``example_concepts``: a folder of concepts learned from example images (``dermkit concepts
    learn``; the bias experiment writes one for its artefact) for the same encoder: each becomes a
    named concept of the bottleneck, and its direction is taken out of the embedding before the SAE
    (see the module doc)."""

    sae: str = "runs/sae/model"
    Cs: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3])
    refit_Cs: list[float] | None = field(default_factory=lambda: [0.0003, 0.001, 0.003, 0.01, 0.03])
    class_weight: str | None = "balanced"
    # The L1 multinomial head's solver: fista (full-batch accelerated proximal gradient in torch, the
    # same objective as scikit-learn's; max_iter = its steps) or saga (scikit-learn; max_iter = passes
    # over the data: 300, warm-started along the C grid, took minutes on HAM10000 with dense codes).
    # model.json records the solver, its iterations and whether it converged.
    solver: str = "fista"
    max_iter: int = 5000
    vocabulary: str | None = None
    name_concepts: bool = True
    min_name_margin: float = 0.01
    min_name_similarity: float | None = 0.0
    naming: str = "both"
    name_data: str | None = None
    min_name_auroc: float = 0.6
    encode_batch_size: int = 64
    num_workers: int = 2
    cache_dir: str | None = None
    device: str = "cpu"
    example_concepts: str | None = None

    def validate(self) -> None:
        super().validate()
        check_probe_settings(self.Cs, self.class_weight, self.max_iter, self.refit_Cs)
        if self.solver not in L1_SOLVERS:
            raise ConfigError(f"solver must be one of {', '.join(L1_SOLVERS)}, got {self.solver!r}")
        if self.encode_batch_size < 1 or self.num_workers < 0:
            raise ConfigError("encode_batch_size must be >= 1, num_workers >= 0")
        if not self.min_name_margin >= 0:
            raise ConfigError(f"min_name_margin must be >= 0 (cosine similarity), got {self.min_name_margin}")
        if self.min_name_similarity is not None and not -1 <= self.min_name_similarity <= 1:
            raise ConfigError("min_name_similarity must be a cosine in [-1, 1] or null, "
                              f"got {self.min_name_similarity}")
        if self.naming not in NAMING:
            raise ConfigError(f"naming must be one of {', '.join(NAMING)}, got {excerpt(self.naming)}")
        if isinstance(self.min_name_auroc, bool) or not isinstance(self.min_name_auroc, (int, float)) \
                or not 0.5 <= self.min_name_auroc <= 1:
            raise ConfigError(f"min_name_auroc must be an AUROC in [0.5, 1], got {excerpt(self.min_name_auroc)}")
        if self.vocabulary is not None and not Path(self.vocabulary).expanduser().is_file():
            raise ConfigError(f"vocabulary: {self.vocabulary} not found")

    def model_specs(self) -> dict[str, str]:
        return {"sae": self.sae, **({"example_concepts": self.example_concepts} if self.example_concepts else {})}


def load_sae_folder(folder, device: str = "auto"):
    """``(encoder, sae, card)`` of a ``method: sae`` model folder (the encoder checked by fingerprint)."""
    enc, card, tensors = EncoderHeadPredictor.read(folder, device)
    state = {k[len("sae."):]: v for k, v in tensors.items() if k.startswith("sae.")}
    if not state:
        raise ModelError(f"{folder} holds no SAE (no sae.* tensors in model.safetensors); give the model folder of "
                         "a `method: sae` run")
    meta = card.get("sae") or {}
    return enc, SparseAutoencoder.from_state_dict(state, activation=meta.get("activation", "relu_l1"),
                                                  k=meta.get("k")), card


def _name_concepts(config: CBMConfig, enc, sae: SparseAutoencoder, card, concepts: list[dict], kw: dict,
                   val: tuple | None, bank):
    """Name ``concepts`` (SAE latents) in place (see ``CBMConfig.naming``); returns ``(vocabulary
    source, naming record)``. ``val``: ``(features, rows)`` of ``card``'s val split when already
    extracted (reused when ``name_data`` is the CBM's own dataset); ``bank``: embeddings -> concept
    activations (:func:`concept_bank`)."""
    naming: dict = {"naming": config.naming}
    taken: set[str] = set()
    if config.naming in ("annotations", "both"):
        name_card = card if config.name_data is None else load_card(config.name_data)
        annotations = concept_annotations(name_card)
        naming.update(name_data=name_card.name, name_split="val", min_name_auroc=config.min_name_auroc,
                      annotations=len(annotations))
        if annotations:
            if name_card is card and val is not None:
                x_va, rows = val
            else:
                x_va, _, rows = extract_split_features(enc, name_card, "val", **kw)
            found = name_by_annotations(bank(x_va), [c["latent"] for c in concepts], rows, annotations,
                                        groups=row_groups(rows, name_card.group_column),
                                        min_auroc=config.min_name_auroc, n_bootstrap=max(config.n_bootstrap, 200))
            for c, n in zip(concepts, found):
                c.update(name_source=None, name_auroc=n["auroc"], name_low=n["low"], name_high=n["high"],
                         unnamed=n["unnamed"], candidate=n.get("candidate"))
                if n["name"]:
                    c.update(name=n["name"], group="annotation", name_source=f"annotation ({name_card.name} val)")
                    taken.add(n["name"])
    rest = [c for c in concepts if not c["name"]]
    vocab_source = None
    if config.naming in ("text", "both") and getattr(enc, "has_text", False):
        naming.update(min_name_margin=config.min_name_margin, min_name_similarity=config.min_name_similarity)
    if config.naming in ("text", "both") and getattr(enc, "has_text", False) and rest:
        vocab = load_vocabulary(config.vocabulary)
        keep = [i for i, n in enumerate(vocab.names) if n not in taken]
        vocab = Vocabulary([vocab.names[i] for i in keep], [vocab.groups[i] for i in keep],
                           [vocab.texts[i] for i in keep], vocab.source)
        if len(vocab):
            named = name_latents(sae.atoms.numpy(), [c["latent"] for c in rest], vocabulary_embeddings(enc, vocab),
                                 vocab, min_margin=config.min_name_margin, min_similarity=config.min_name_similarity)
            for c, n in zip(rest, named):
                if n["name"] or config.naming == "text" or c.get("candidate") is None:
                    c.update({k: n[k] for k in _NAME_KEYS})
                else:  # keep the annotation screen's reason; record what the text tower offered
                    c.update({k: n[k] for k in _NAME_KEYS if k not in ("unnamed", "candidate")})
                if n["name"]:
                    c["name_source"] = "text similarity"
        vocab_source = vocab.source
    naming.update(named=sum(bool(c["name"]) for c in concepts), unnamed=sum(not c["name"] for c in concepts),
                  by_annotation=sum(bool(c["name"]) and str(c.get("name_source", "")).startswith("annotation")
                                    for c in concepts))
    if naming["named"] == 0 and config.naming == "text" and not getattr(enc, "has_text", False):
        return None, None
    return vocab_source, naming


def concept_bank(sae: SparseAutoencoder, examples: ExampleConcepts | None, features: np.ndarray) -> np.ndarray:
    """A bottleneck's concept activations of ``(N, D)`` embeddings: the SAE's latents, then (with
    ``examples``) the projections on the learned concepts' vectors, the SAE seeing the embedding
    without their directions."""
    if examples is None:
        return sae.activations(features).astype(np.float64)
    return np.concatenate([sae.activations(examples.residual(features).astype(np.float32)),
                           examples.scores(features)], axis=1)


class CBMPredictor(EncoderHeadPredictor):
    """Encoder -> SAE latents (optionally some zeroed) -> sparse logistic regression."""

    method = "cbm"

    def __init__(self, enc, sae: SparseAutoencoder, probe: LinearProbe, model_card: dict, zeroed: Sequence[int] = (),
                 ablation: str = "zero", examples: ExampleConcepts | None = None, **kw):
        super().__init__(enc, model_card, **kw)
        if ablation not in ABLATIONS:
            raise ConfigError(f"ablation must be one of {', '.join(ABLATIONS)}, got {excerpt(ablation)}")
        self.sae, self.probe = sae.cpu().eval(), probe
        self.examples = examples
        self.zeroed = sorted({int(i) for i in zeroed})
        self.ablation = ablation

    @property
    def n_concepts(self) -> int:
        """Columns of the bottleneck: the SAE's latents, then the concepts learned from examples."""
        return self.sae.n_latents + (len(self.examples) if self.examples is not None else 0)

    # -- state
    def _state(self):
        import torch

        tensors = {f"sae.{k}": v.detach().float() for k, v in self.sae.state_dict().items()}
        tensors.update(self.probe.tensors())
        tensors["zeroed"] = torch.tensor(self.zeroed or [-1], dtype=torch.int64)
        card = {**self.model_card, "C": self.probe.C, "zeroed": self.zeroed, "ablation": self.ablation}
        if self.examples is not None:
            tensors["examples.vectors"] = torch.from_numpy(self.examples.vectors.astype(np.float32))
            card["example_concepts"] = self.examples.card()
        return tensors, card

    # -- concepts
    @property
    def concepts(self) -> list[dict]:
        """The latents with non-zero weight: ``{latent, name, group, similarity, best_similarity, margin,
        candidate, unnamed, weight}`` (``name`` None: unnamed, shown as "latent N")."""
        return list(self.model_card.get("concepts") or [])

    def concept_name(self, latent: int) -> str:
        for c in self.concepts:
            if c["latent"] == latent and c.get("name"):
                return str(c["name"])
        return f"latent {latent}"

    def bank(self, features: np.ndarray) -> np.ndarray:
        """The bottleneck's concept activations of ``(N, D)`` embeddings before any intervention: the SAE's
        latents, then (when the model has concepts learned from examples) their projections, the SAE
        seeing the embedding without their directions."""
        return concept_bank(self.sae, self.examples, features)

    def activations(self, features: np.ndarray) -> np.ndarray:
        """Concept activations of ``(N, D)`` embeddings (:meth:`bank`), the intervened concepts switched
        off (set to zero, or to their training mean with ``ablation="mean"``)."""
        a = self.bank(features)
        if self.zeroed:
            a[:, self.zeroed] = 0.0 if self.ablation == "zero" else self.probe.mean[self.zeroed]
        return a

    def head(self, features: np.ndarray) -> np.ndarray:
        return self.probe.predict_proba(self.activations(features))

    def with_zeroed(self, latents: Sequence[int], ablation: str | None = None) -> "CBMPredictor":
        """The same classifier with these latents switched off (an intervention); ``ablation``: zero or
        mean (default: this predictor's own)."""
        bad = [i for i in latents if not 0 <= int(i) < self.n_concepts]
        if bad:
            raise ConfigError(f"latent ids {bad} out of range 0..{self.n_concepts - 1}")
        return CBMPredictor(self.enc, self.sae, self.probe, dict(self.model_card), zeroed=[*self.zeroed, *latents],
                            ablation=ablation or self.ablation, examples=self.examples, cache_dir=self.cache_dir,
                            batch_size=self.batch_size, num_workers=self.num_workers)

    def explain_features(self, features: np.ndarray, top: int = 5) -> list[list[dict]]:
        """Per image: the ``top`` concept contributions (standardised activation x weight) to the
        predicted class, largest first."""
        a = self.activations(features)
        z = (a - self.probe.mean) / self.probe.scale
        proba = self.probe.predict_proba(a)
        out = []
        for i, c in enumerate(proba.argmax(axis=1)):
            contrib = z[i] * self.probe.coef[c]
            order = [j for j in np.argsort(-contrib) if self.probe.coef[c, j] != 0][:top]
            out.append([{"latent": int(j), "concept": self.concept_name(int(j)), "activation": float(a[i, j]),
                         "weight": float(self.probe.coef[c, j]), "contribution": float(contrib[j])} for j in order])
        return out

    def predict_details(self, paths) -> list[dict]:
        """What ``dermkit predict`` prints: the predicted class and its top concept contributions."""
        feats = extract_features(self.enc, list(paths), cache_dir=self.cache_dir, batch_size=self.batch_size,
                                 num_workers=self.num_workers, progress=False)
        rows = []
        for expl in self.explain_features(feats):
            rows.append({"concepts": ", ".join(f"{e['concept']} ({e['contribution']:+.2f})" for e in expl) or "none"})
        return rows


@register_method
class ConceptBottleneck(Method):
    """Sparse logistic regression on SAE latents, concepts named by a vocabulary."""

    name = "cbm"
    config_class = CBMConfig
    card_fields = {"base_model": str, "C": float}
    description = "concept bottleneck: sparse (L1) logistic regression on SAE latents, concepts named, interventions"
    tiny_config = {"data": "{data}", "sae": "{sae}", "num_workers": 0, "Cs": [0.3, 1.0], "n_bootstrap": 20}

    def fit(self, config: CBMConfig, run) -> CBMPredictor:
        card = run.card()
        enc, sae, sae_card = load_sae_folder(Path(config.sae).expanduser(), config.device)
        kw = dict(cache_dir=config.cache_dir, batch_size=config.encode_batch_size, num_workers=config.num_workers,
                  progress=run.progress)
        examples = _example_concepts(config, sae, sae_card)

        def bank(x):
            return concept_bank(sae, examples, x)

        x_tr, y_tr, _ = extract_split_features(enc, card, "train", **kw)
        x_va, y_va, va_rows = extract_split_features(enc, card, "val", **kw)
        probe = fit_probe(bank(x_tr), y_tr, bank(x_va), y_va, card.classes, Cs=config.Cs,
                          class_weight=config.class_weight, max_iter=config.max_iter, penalty="l1",
                          solver=config.solver, refit_Cs=config.refit_Cs)
        nonzero = [int(j) for j in np.flatnonzero((np.abs(probe.coef) > 0).any(axis=0))]
        if not nonzero:
            raise DataError("the L1 bottleneck kept no concept at any C; try larger Cs (weaker L1)")
        concepts = [{"latent": j, "name": None, "group": None, "similarity": None, "best_similarity": None,
                     "margin": None, "candidate": None, "unnamed": "not named (no text tower or name_concepts off)",
                     "weight": float(np.abs(probe.coef[:, j]).max())} for j in nonzero]
        learned = [c for c in concepts if c["latent"] >= sae.n_latents]
        for c in learned:
            i = c["latent"] - sae.n_latents
            c.update(name=examples.names[i], group="learned from examples", unnamed=None,
                     name_source="learned from examples", separation_auroc=examples.info[i].get("separation_auroc"))
        discovered = [c for c in concepts if c["latent"] < sae.n_latents]
        vocab_source, naming = None, None
        if config.name_concepts and discovered:
            vocab_source, naming = _name_concepts(config, enc, sae, card, discovered, kw, val=(x_va, va_rows),
                                                  bank=bank)
        info = {"model": f"CBM on {sae_card.get('model', 'SAE')}", "classes": list(card.classes),
                "dataset": card.name, "task": config.task, "negative_name": config.negative_name,
                "base_model": sae_card["base_model"], "base_fingerprint": sae_card.get("base_fingerprint"),
                "sae_folder": str(Path(config.sae).expanduser().resolve()), "sae": sae_card.get("sae"),
                "concepts": sorted(concepts, key=lambda c: -c["weight"]), "vocabulary": vocab_source,
                "naming": naming,
                "nonzero_concepts": len(nonzero), "learned_concepts": len(learned), "penalty": "l1",
                "probe": probe.info,
                "val_balanced_accuracy": {f"{c:g}": v for c, v in probe.val_scores.items()}}
        predictor = CBMPredictor(enc, sae, probe, info, examples=examples, cache_dir=config.cache_dir,
                                 batch_size=config.encode_batch_size, num_workers=config.num_workers)
        run.save_best(predictor)
        run.summary.update(model=predictor.name, C=probe.C, nonzero_concepts=len(nonzero), naming=naming,
                           converged=probe.info["converged"], refit_C=probe.info.get("refit_C"),
                           n_latents=sae.n_latents, selected_on="val balanced_accuracy",
                           best_val_score=probe.val_scores[probe.C], concepts=info["concepts"][:50])
        run.table_extra["concepts"] = f"{len(nonzero)}/{predictor.n_concepts}"
        return predictor

    def load(self, folder, device: str = "auto") -> CBMPredictor:
        enc, card, tensors = CBMPredictor.read(folder, device)
        meta = card.get("sae") or {}
        state = {k[len("sae."):]: v for k, v in tensors.items() if k.startswith("sae.")}
        sae = SparseAutoencoder.from_state_dict(state, activation=meta.get("activation", "relu_l1"), k=meta.get("k"))
        t = {k: tensors[k].numpy() for k in _PROBE}
        probe = LinearProbe(list(card["classes"]), t["coef"], t["intercept"], t["mean"], t["scale"], float(card["C"]))
        examples = None
        if card.get("example_concepts"):
            examples = ExampleConcepts.from_card(card["example_concepts"], tensors.get("examples.vectors"),
                                                 str(folder))
        return CBMPredictor(enc, sae, probe, card, zeroed=card.get("zeroed") or [],
                            ablation=card.get("ablation") or "zero", examples=examples)


def _example_concepts(config: CBMConfig, sae: SparseAutoencoder, sae_card: dict) -> ExampleConcepts | None:
    """The config's concepts learned from examples, checked against the SAE's encoder (None: none)."""
    if not config.example_concepts:
        return None
    examples = load_example_concepts(config.example_concepts)
    if examples.dim != sae.d_in:
        raise ConfigError(f"example_concepts: {config.example_concepts} holds {examples.dim}-d vectors, the SAE reads "
                          f"{sae.d_in}-d embeddings: learn them with the SAE's encoder ({sae_card.get('base_model')})")
    fingerprint = sae_card.get("base_fingerprint")
    if examples.base_fingerprint and fingerprint and examples.base_fingerprint != fingerprint:
        raise ConfigError(f"example_concepts: {config.example_concepts} was learned with another encoder (fingerprint "
                          f"{examples.base_fingerprint} != the SAE's {fingerprint}); learn it again with "
                          f"{sae_card.get('base_model')}")
    return examples


# ------------------------------------------------------------------------------ concepts learned from examples

#: Column values that mean "the image shows the concept" unless told otherwise.
PRESENT_VALUES = ("1", "true", "yes", "present")


def learn_concepts(sae_folder, data, column: str, name: str, out, positive: Sequence[str] = PRESENT_VALUES,
                   split: str = "train", progress: bool = True, cache_dir=None,
                   num_workers: int = 2) -> ExampleConcepts:
    """Learn the concept ``name`` from a dataset column: the images of ``split`` whose ``column`` value is
    one of ``positive`` (case-insensitive) against those with any other value (rows with no value are
    left out), embedded by the encoder of the SAE in ``sae_folder``
    (:func:`dermkit.models.concepts.concept_direction`, unpaired). Writes it to ``out`` for a CBM's
    ``example_concepts:`` and returns it; DataError naming the column when it cannot define a concept."""
    enc, _, sae_card = load_sae_folder(Path(sae_folder).expanduser())
    card = load_card(data)
    rows = card.rows(split)
    if column not in rows.columns:
        raise DataError(f"{card.name} has no column {column!r}; its columns: {', '.join(map(str, rows.columns))}")
    values = rows[column].astype("string").str.strip().str.lower()
    known = values.notna() & (values != "")
    wanted = {str(v).strip().lower() for v in positive}
    has = (values.isin(wanted) & known).to_numpy(dtype=bool)
    lacks = (known & ~values.isin(wanted)).to_numpy(dtype=bool)
    if has.sum() < 2 or lacks.sum() < 2:
        seen = ", ".join(sorted(values[known].unique())[:10])
        raise DataError(f"{card.name} {split}: {int(has.sum())} images have {column} in {sorted(wanted)} and "
                        f"{int(lacks.sum())} have another value (values seen: {seen}); a concept needs at least 2 of "
                        "each: pass --positive with the values that mean the concept is there")
    paths = [card.image_path(p) for p in rows["image"]]
    feats = extract_features(enc, paths, cache_dir=cache_dir, num_workers=num_workers, progress=progress)
    vector, info = concept_direction(feats[has], feats[lacks])
    info.update(source=f"{card.name} {split}: {column} in {sorted(wanted)} vs other values")
    examples = ExampleConcepts([name], vector[None], [info], sae_card.get("base_model"),
                               sae_card.get("base_fingerprint"))
    examples.save(out)
    return examples


# ------------------------------------------------------------------------------ intervention and gallery


class NoConceptMatch(ConfigError):
    """A text query whose nearest concept is below the similarity floor."""


def resolve_latents(predictor: CBMPredictor, items: Sequence[str], per_query: int = 1,
                    min_similarity: float = QUERY_MIN_SIMILARITY) -> list[dict]:
    """Latents for ``--zero`` items: an integer (latent id), a concept name of the model, or a text
    query matched to the ``per_query`` nearest of the model's concepts by the text tower, those
    with a cosine of at least ``min_similarity`` (:class:`NoConceptMatch` when none is)."""
    out = []
    names = {c["name"]: c["latent"] for c in predictor.concepts if c.get("name")}
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        if item.lstrip("-").isdigit():
            out.append({"item": item, "latent": int(item), "how": "latent id"})
        elif item in names:
            out.append({"item": item, "latent": int(names[item]), "how": "concept name"})
        else:
            if not getattr(predictor.enc, "has_text", False):
                raise ConfigError(f"--zero {item!r} is not a latent id or a concept name of this model "
                                  f"({', '.join(sorted(names)) or 'none named'}), and its encoder has no text tower "
                                  "to match a text query")
            query = encode_texts(predictor.enc, [item]).numpy()[0]
            candidates = [c["latent"] for c in predictor.concepts if c["latent"] < predictor.sae.n_latents]
            matched = nearest_latents(query, predictor.sae.atoms.numpy(), candidates, k=per_query,
                                      min_similarity=min_similarity)
            if not matched:
                nearest = nearest_latents(query, predictor.sae.atoms.numpy(), candidates, k=1)
                best = (f"its nearest, latent {nearest[0][0]} ({predictor.concept_name(nearest[0][0])}), is at cosine "
                        f"{nearest[0][1]:.3f}") if nearest else "the model has no concepts"
                raise NoConceptMatch(
                    f"--zero {excerpt(item, 60)}: no concept matches this text query ({best}, below the similarity "
                    f"floor {min_similarity:g}); give a latent id or a concept name of the model (`dermkit concepts "
                    "show`), or lower --min-similarity")
            for latent, sim in matched:
                out.append({"item": item, "latent": latent, "how": f"text query (cosine {sim:.3f})",
                            "concept": predictor.concept_name(latent)})
    if not out:
        raise ConfigError("--zero is empty; give latent ids, concept names or text queries separated by commas")
    return out


def intervene(predictor: CBMPredictor, card, items: Sequence[str], out_dir, split: str = "test",
              n_bootstrap: int = 1000, progress: bool = True, per_query: int = 1,
              min_similarity: float = QUERY_MIN_SIMILARITY, ablation: str = "zero") -> dict:
    """Metrics before and after switching off the latents ``items`` name (``ablation``: zero or mean);
    reports in ``out_dir/before|after``."""
    chosen = resolve_latents(predictor, items, per_query, min_similarity)
    after = predictor.with_zeroed([c["latent"] for c in chosen], ablation=ablation)
    result = {"zeroed": chosen, "split": split, "ablation": ablation}
    for key, p in (("before", predictor), ("after", after)):
        report = evaluate(p.predict_split(card, split, progress=progress), n_bootstrap=n_bootstrap,
                          title=f"{predictor.name} on {card.name} ({split}), {key} the intervention")
        report.save(Path(out_dir) / key)
        m = report.metrics
        result[key] = {k: m.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")}
        result[f"{key}_ci"] = {k: m["ci"].get(k) for k in ("balanced_accuracy", "macro_auc")}
    io.write_json(Path(out_dir) / "intervention.json", result)
    return result


def validity_tables(predictor: CBMPredictor, card, split: str = "test", select_split: str = "val",
                    n_bootstrap: int = 1000, progress: bool = True) -> dict:
    """Validity of the model's concepts (latents with non-zero weight) against every concept
    annotation the dataset carries (packaged ``annotations.yaml`` + the card's own
    ``concept_annotations``): ``validity`` (each concept against its own name's annotation, AUROC
    [95% CI] on ``split``), ``matrix`` (every concept against every annotation, plain AUROC on
    ``split``), ``best`` (per annotation the latent with the highest AUROC on ``select_split``,
    reported with a CI on ``split``), plus ``rows``, ``paths`` and ``activations`` of ``split``."""
    annotations = concept_annotations(card)
    latents = [int(c["latent"]) for c in predictor.concepts]
    kw = dict(cache_dir=predictor.cache_dir, batch_size=predictor.batch_size, num_workers=predictor.num_workers,
              progress=progress)
    rows = card.rows(split)
    paths = [card.image_path(p) for p in rows["image"]]
    acts = predictor.activations(extract_features(predictor.enc, paths, **kw))
    groups = row_groups(rows, card.group_column)
    validity = concept_validity(acts, predictor.concepts, rows, annotations, groups=groups, n_bootstrap=n_bootstrap)
    matrix = validity_matrix(acts, latents, rows, annotations) if annotations else None
    best = None
    if annotations:
        select_rows = card.rows(select_split)
        if len(select_rows) == 0:
            raise DataError(f"{card.name} has no {select_split} split to choose the best latent per annotation on")
        select_acts = predictor.activations(extract_features(
            predictor.enc, [card.image_path(p) for p in select_rows["image"]], **kw))
        names = {int(c["latent"]): c["name"] for c in predictor.concepts if c.get("name")}
        best = best_latents(select_acts, select_rows, acts, rows, latents, annotations, names=names, groups=groups,
                            n_bootstrap=n_bootstrap, select_split=select_split, split=split)
    return {"validity": validity, "matrix": matrix, "best": best, "annotations": annotations, "rows": rows,
            "paths": paths, "activations": acts}


def order_by_validity(predictor: CBMPredictor, validity) -> list[dict]:
    """Concepts sorted for the gallery: validated names (AUROC CI above 0.5) first, then other named
    concepts with an AUROC, both by the CI's lower bound; then the rest by weight."""
    by_latent = {int(r["latent"]): r for r in validity.to_dict("records")} if len(validity) else {}

    def key(c):
        v = by_latent.get(int(c["latent"]), {})
        low = v.get("low")
        if low is None or not np.isfinite(low):
            return (2, 0.0, -c["weight"])
        return (0 if low > 0.5 else 1, -float(low), -c["weight"])

    return sorted(predictor.concepts, key=key)


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def concept_gallery(predictor: CBMPredictor, card, out_dir, split: str = "test", top: int = 8,
                    n_bootstrap: int = 1000, progress: bool = True, select_split: str = "val") -> dict:
    """``concepts.html``: per concept (non-zero latent), sorted by validity, its name (or "latent N"),
    text similarity and margin, weight, AUROC against its name's annotation and its ``top`` most
    activating images; ``validity.csv`` (each concept against its own name's annotation),
    ``validity_matrix.csv`` (every concept against every annotation) and ``best_latents.csv``
    (per annotation the best latent, chosen on ``select_split``, reported on ``split``).
    Returns the tables of :func:`validity_tables` and ``page``."""
    tables = validity_tables(predictor, card, split, select_split, n_bootstrap, progress)
    rows, paths, acts, validity = tables["rows"], tables["paths"], tables["activations"], tables["validity"]
    out_dir = Path(out_dir)
    io.write_csv(out_dir / "validity.csv", validity)
    if tables["matrix"] is not None:
        io.write_csv(out_dir / "validity_matrix.csv", tables["matrix"].reset_index())
        io.write_csv(out_dir / "best_latents.csv", tables["best"])
    auroc = {int(r["latent"]): r for r in validity.to_dict("records")} if len(validity) else {}

    def thumb(path) -> str:
        image = open_image(path).convert("RGB")
        image.thumbnail((112, 112))
        buf = BytesIO()
        image.save(buf, "JPEG", quality=80)
        return base64.b64encode(buf.getvalue()).decode("ascii")

    naming = predictor.model_card.get("naming") or {}
    parts = [f"<h1>Concepts of {html.escape(predictor.name)}</h1><p>{html.escape(card.name)} {split} split, "
             f"{len(rows)} images; {len(predictor.concepts)} concepts with non-zero weight out of "
             f"{predictor.sae.n_latents} latents, sorted by validity (names whose AUROC CI lies above 0.5 first, "
             "by the CI's lower bound). Names are hypotheses from two sources (Hungarian matching in both): a "
             f"labelled split's annotations ({html.escape(str(naming.get('name_data', 'none')))} val: kept when the "
             "AUROC's CI there lies above 0.5; "
             f"{naming.get('by_annotation', 0)} names), then text similarity for the rest (kept when the margin over "
             f"the next-best name is at least {naming.get('min_name_margin', 'n/a')}); others are \"latent N\". "
             f"AUROC against the dataset's own annotation on {split} says how good a name is.</p>"]
    for c in order_by_validity(predictor, validity):
        j = c["latent"]
        order = np.argsort(-acts[:, j])[:top]
        v = auroc.get(j, {})
        valid = (f"AUROC {v['auroc']:.3f} [{v['low']:.3f}, {v['high']:.3f}] vs {v['column']}"
                 if v.get("auroc") is not None and np.isfinite(v["auroc"]) else v.get("note", ""))
        if str(c.get("name_source") or "").startswith("annotation"):
            sure = (f"named by its {c['name_source']} AUROC {_fmt(c.get('name_auroc'))} "
                    f"[{_fmt(c.get('name_low'))}, {_fmt(c.get('name_high'))}]")
        else:
            dropped = "" if c.get("name") or not c.get("candidate") else f", closest name {c['candidate']!r} not kept"
            sure = f"text similarity {_fmt(c.get('similarity'))}, margin {_fmt(c.get('margin'))}{dropped}"
        parts.append(f"<h2>{html.escape(predictor.concept_name(j))} <small>(latent {j}, weight "
                     f"{c['weight']:.3f}, {html.escape(sure)}; {html.escape(valid)})</small></h2><div>")
        for i in order:
            label = html.escape(f"{rows['diagnosis'].iloc[i]} · {acts[i, j]:.3f}")
            parts.append(f"<figure style='display:inline-block;margin:4px'><img src='data:image/jpeg;base64,"
                         f"{thumb(paths[i])}'><figcaption>{label}</figcaption></figure>")
        parts.append("</div>")
    if tables["best"] is not None:
        note = html.escape(BEST_LATENT_NOTE.format(select=select_split, split=split))
        parts.append(f"<h2>Best latent per annotation</h2><p>{note}.</p>")
        parts.append(tables["best"].to_html(index=False, na_rep="", float_format=lambda x: f"{x:.3f}"))
    page = "<!doctype html><meta charset='utf-8'><title>concepts</title><body style='font-family:sans-serif'>"
    io.write_text(out_dir / "concepts.html", page + "\n".join(parts) + "</body>")
    return {**tables, "page": out_dir / "concepts.html"}
