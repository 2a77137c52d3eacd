"""Naming learned concepts after the fact: a vocabulary of dermoscopic concepts, embedded by a
vision-language model's text tower, matched one-to-one to latent directions.

A sparse autoencoder's latent ``i`` writes its decoder column ``W_dec[i]`` into the embedding
space; when the embedding space is a CLIP space, that direction can be compared with text
embeddings. PanDerm-2 names the latents a concept bottleneck uses (its non-zero weights) by
matching them to a hand-written vocabulary with the Hungarian algorithm, so no two latents share
a name. A name is kept only when it wins clearly: the margin between the latent's similarity to
its name and to the next-best name must reach a threshold, else the latent stays "latent N" (a
near-tie between two names is a coin toss, not a finding). Here the vocabulary is data
(``data/concepts/vocabulary.yaml``: 7-point checklist criteria, structures, patterns, colours and
artefacts such as hair, rulers and ink), extendable by a file.

A name found this way is a hypothesis: :func:`concept_validity` (AUROC of a latent's activation
against a dataset's own concept annotation) says how good it is.

A concept can also be *learned from examples* instead of discovered (:class:`ExampleConcepts`):
a concept activation vector (Kim et al., TCAV, ICML 2018), here the unit difference between the
mean embedding of images with the concept and of images without it (paired when each image with it
has its own copy without it, as the bias experiment's inked copies do). Post-hoc concept bottlenecks
(Yuksekgonul et al., ICLR 2023) put such vectors in the bottleneck. A concept bottleneck that holds
them also takes their span out of the embedding before the SAE sees it
(:meth:`ExampleConcepts.residual`), so the discovered latents carry nothing along those directions
and switching a learned concept off removes it from the model's input to the head.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from dermkit import io
from dermkit.errors import DataError, ModelError
from dermkit.inputs import MAX_YAML_CHARS, load_yaml, read_text

__all__ = ["EXAMPLE_CONCEPTS_FORMAT", "ExampleConcepts", "Vocabulary", "concept_direction", "load_example_concepts",
           "load_vocabulary", "name_latents", "nearest_latents", "vocabulary_embeddings"]


@dataclass
class Vocabulary:
    """Concept names, their group and the texts (names x templates) each name's embedding averages."""

    names: list[str]
    groups: list[str]
    texts: list[list[str]]
    source: str

    def __len__(self) -> int:
        return len(self.names)


def load_vocabulary(path: str | os.PathLike | None = None, extend: bool = True) -> Vocabulary:
    """The packaged vocabulary, extended (or, with ``extend=False``, replaced) by ``path``.

    A file has ``concepts: {group: {name: [texts...]}}`` and optional ``templates: ["... {} ..."]``.
    """
    packaged = resources.files("dermkit.data").joinpath("concepts/vocabulary.yaml").read_text(encoding="utf-8")
    layers = []
    if extend or path is None:
        layers.append((_parse(packaged, "packaged vocabulary.yaml"), "packaged vocabulary.yaml"))
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(f"concept vocabulary {path} not found; write concepts: {{group: {{name: [texts]}}}}")
        layers.append((_parse(read_text(path, "concept vocabulary", DataError, MAX_YAML_CHARS), str(path)), str(path)))
    entries: dict[str, tuple[str, list[str]]] = {}
    for spec, _ in layers:
        templates = spec.get("templates") or ["{}"]
        for group, concepts in spec["concepts"].items():
            for name, texts in concepts.items():
                texts = [texts] if isinstance(texts, str) else list(texts)
                entries[str(name)] = (str(group), [t.format(x) for x in texts for t in templates])
    if not entries:
        raise DataError("the concept vocabulary is empty")
    names = list(entries)
    return Vocabulary(names, [entries[n][0] for n in names], [entries[n][1] for n in names],
                      " + ".join(w for _, w in layers))


def _parse(text: str, where: str) -> dict:
    spec = load_yaml(text, where, DataError) or {}
    concepts = spec.get("concepts") if isinstance(spec, dict) else None
    if not isinstance(concepts, dict) or not all(isinstance(v, dict) for v in concepts.values()):
        raise DataError(f"{where}: expected concepts: {{group: {{name: [texts...]}}}}")
    for group, entries in concepts.items():
        for name, texts in entries.items():
            listed = [texts] if isinstance(texts, str) else texts
            if not texts or not all(isinstance(t, str) and t.strip() for t in listed):
                raise DataError(f"{where}: concept {group}/{name} needs at least one non-empty text")
    templates = spec.get("templates")
    if templates is not None and (not isinstance(templates, list) or not all("{}" in str(t) for t in templates)):
        raise DataError(f"{where}: templates must be a list of texts with {{}} where the concept goes")
    return spec


def vocabulary_embeddings(enc, vocabulary: Vocabulary) -> np.ndarray:
    """``(V, D)`` L2-normalised text embedding of each concept (mean of its texts, re-normalised)."""
    from dermkit.models.text import class_embeddings  # imports torch; reading a vocabulary does not need it

    prompts = {name: texts for name, texts in zip(vocabulary.names, vocabulary.texts)}
    return class_embeddings(enc, prompts, vocabulary.names).numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def name_latents(directions: np.ndarray, latent_ids: Sequence[int], text_emb: np.ndarray,
                 vocabulary: Vocabulary, min_margin: float = 0.0, min_similarity: float | None = None) -> list[dict]:
    """One-to-one names for ``latent_ids`` (rows of ``directions``, e.g. an SAE's decoder columns),
    each with how sure it is.

    Maximises the total cosine similarity between latent directions and concept text embeddings
    (Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`); with more latents than
    concepts the least similar latents get no candidate. Per latent: ``candidate`` (the name the
    matching gives it), ``similarity`` (cosine to that name), ``best_similarity`` (to any name),
    ``best_name``, and ``margin`` = ``similarity`` minus the best similarity to any *other* name
    (negative when the matching gave it a name that is not its nearest). The candidate becomes
    ``name`` only when ``margin >= min_margin`` and (if given) ``similarity >= min_similarity``;
    otherwise ``name`` is None, ``unnamed`` says why, and the latent is shown as "latent N".
    """
    from scipy.optimize import linear_sum_assignment

    latent_ids = [int(i) for i in latent_ids]
    if not latent_ids:
        return []
    sim = _unit(directions[latent_ids]) @ _unit(text_emb).T  # (L, V)
    rows, cols = linear_sum_assignment(-sim)
    names = {int(r): int(c) for r, c in zip(rows, cols)}
    out = []
    for r, latent in enumerate(latent_ids):
        c = names.get(r)
        best = int(np.argmax(sim[r]))
        entry = {"latent": latent, "name": None, "group": None, "candidate": None, "similarity": None,
                 "best_similarity": float(sim[r, best]), "best_name": vocabulary.names[best], "margin": None,
                 "unnamed": None}
        if c is None:
            entry["unnamed"] = "more latents than vocabulary names: no name left for it"
            out.append(entry)
            continue
        others = np.delete(sim[r], c)
        margin = float(sim[r, c] - others.max()) if len(others) else float("inf")
        entry.update(candidate=vocabulary.names[c], similarity=float(sim[r, c]),
                     margin=margin if np.isfinite(margin) else None)
        if margin < min_margin:
            entry["unnamed"] = f"margin {margin:.3f} to the next-best name is below {min_margin:g}"
        elif min_similarity is not None and sim[r, c] < min_similarity:
            entry["unnamed"] = f"text similarity {sim[r, c]:.3f} is below {min_similarity:g}"
        else:
            entry.update(name=vocabulary.names[c], group=vocabulary.groups[c])
        out.append(entry)
    return out


# A text query must reach this cosine to match a concept. On the 1-epoch dermkit-CLIP of RESULTS.md
# the names the matching kept sit at 0.16-0.47 and "purple ink" reached its nearest concept at 0.19;
# a query at 0.09 (issue 31) is noise: "the nearest concept" exists for any text at all.
QUERY_MIN_SIMILARITY = 0.15


def nearest_latents(query_emb: np.ndarray, directions: np.ndarray, candidates: Sequence[int] | None = None,
                    k: int = 1, min_similarity: float | None = None) -> list[tuple[int, float]]:
    """The ``k`` latents whose directions are most similar to a text query, ``[(latent, cosine)]``,
    most similar first; with ``min_similarity`` only those at least that similar (maybe none)."""
    ids = np.arange(len(directions)) if candidates is None else np.asarray(list(candidates), dtype=int)
    if len(ids) == 0:
        return []
    sim = _unit(directions[ids]) @ _unit(np.asarray(query_emb).reshape(-1))
    order = np.argsort(-sim)[:k]
    return [(int(ids[i]), float(sim[i])) for i in order if min_similarity is None or sim[i] >= min_similarity]


# ------------------------------------------------------------------------------ concepts learned from examples

EXAMPLE_CONCEPTS_FORMAT = "dermkit-example-concepts"
_EXAMPLE_WEIGHTS, _EXAMPLE_CARD = "concepts.safetensors", "concepts.json"


def concept_direction(with_concept: np.ndarray, without: np.ndarray, paired: bool = False) -> tuple[np.ndarray, dict]:
    """A concept activation vector from ``(N, D)`` embeddings of images with the concept and ``(M, D)``
    of images without it: the unit vector along ``mean(with) - mean(without)`` (with ``paired``, row
    ``i`` of both is the same image with and without it, N == M: the mean of the paired differences,
    the same vector, and the check that the rows pair up). Returns ``(vector, info)``; ``info`` has the
    counts and ``separation_auroc``: how well the projection on the vector separates the two sets
    (in-sample, so an optimistic figure: a check that the concept is visible to the encoder at all)."""
    from sklearn.metrics import roc_auc_score

    a, b = np.asarray(with_concept, dtype=np.float64), np.asarray(without, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise DataError(f"concept examples must be two (N, D) embedding arrays of one width, got {a.shape} and "
                        f"{b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise DataError(f"a concept needs at least 2 images with it and 2 without (got {len(a)} and {len(b)})")
    if paired and len(a) != len(b):
        raise DataError(f"paired examples need one image without the concept per image with it ({len(a)} != "
                        f"{len(b)})")
    diff = (a - b).mean(axis=0) if paired else a.mean(axis=0) - b.mean(axis=0)
    norm = float(np.linalg.norm(diff))
    if norm < 1e-12:
        raise DataError("the images with and without the concept have the same mean embedding: the encoder does not "
                        "see it")
    vector = diff / norm
    scores = np.r_[a @ vector, b @ vector]
    auroc = float(roc_auc_score(np.r_[np.ones(len(a)), np.zeros(len(b))], scores))
    return vector, {"n_with": int(len(a)), "n_without": int(len(b)), "paired": bool(paired),
                    "separation_auroc": auroc}


@dataclass
class ExampleConcepts:
    """Named concept activation vectors in an encoder's embedding space (:func:`concept_direction`):
    ``names``, ``vectors`` ``(m, D)`` (unit rows), ``info`` (per concept, how it was learned) and the
    encoder they belong to (``base_model``, ``base_fingerprint``)."""

    names: list[str]
    vectors: np.ndarray
    info: list[dict]
    base_model: str | None = None
    base_fingerprint: str | None = None

    def __post_init__(self):
        self.vectors = np.atleast_2d(np.asarray(self.vectors, dtype=np.float64))
        if len(self.names) != len(self.vectors) or len(self.info) != len(self.names) or not self.names:
            raise ModelError(f"example concepts: {len(self.names)} names for {len(self.vectors)} vectors")
        if len(set(self.names)) != len(self.names):
            raise ModelError(f"example concepts: names must be unique, got {self.names}")
        # An orthonormal basis of the vectors' span (the residual removes all of it, in any order).
        q, r = np.linalg.qr(self.vectors.T)
        self._basis = q[:, np.abs(np.diag(r)) > 1e-8 * max(1.0, float(np.abs(np.diag(r)).max()))]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def scores(self, x: np.ndarray) -> np.ndarray:
        """``(N, m)``: each embedding's projection on each concept vector (its concept activation)."""
        return np.asarray(x, dtype=np.float64) @ self.vectors.T

    def residual(self, x: np.ndarray) -> np.ndarray:
        """The embeddings with the span of the concept vectors taken out (orthogonal projection)."""
        x = np.asarray(x, dtype=np.float64)
        return x - (x @ self._basis) @ self._basis.T

    def card(self) -> dict:
        return {"format": EXAMPLE_CONCEPTS_FORMAT, "names": list(self.names), "concepts": list(self.info),
                "base_model": self.base_model, "base_fingerprint": self.base_fingerprint}

    @classmethod
    def from_card(cls, card: dict, vectors, where: str) -> "ExampleConcepts":
        """The inverse of :meth:`card` with its ``(m, D)`` vectors; ModelError naming ``where`` when the
        card or the vectors are missing."""
        names, info = card.get("names"), card.get("concepts")
        if vectors is None or not isinstance(names, list) or not isinstance(info, list):
            raise ModelError(f"{where}: learned concepts need their vectors and `names` and `concepts` lists; the "
                             "folder is incomplete")
        vectors = vectors.double().numpy() if hasattr(vectors, "double") else np.asarray(vectors, dtype=np.float64)
        return cls([str(n) for n in names], vectors, info, card.get("base_model"), card.get("base_fingerprint"))

    def save(self, folder: str | os.PathLike) -> Path:
        """``folder/concepts.safetensors`` (the vectors) + ``concepts.json`` (names, provenance)."""
        import torch

        from dermkit.models.checkpoint import save_tensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(folder / _EXAMPLE_WEIGHTS, {"vectors": torch.from_numpy(self.vectors.astype(np.float32))})
        io.write_json(folder / _EXAMPLE_CARD, self.card())
        return folder


def load_example_concepts(folder: str | os.PathLike) -> ExampleConcepts:
    """The :class:`ExampleConcepts` saved in ``folder``; ModelError naming the file when it is not one."""
    import json

    from dermkit.models.checkpoint import load_tensors

    folder = Path(folder).expanduser()
    card_path = folder / _EXAMPLE_CARD
    if not card_path.is_file():
        raise ModelError(f"{folder} holds no learned concepts ({_EXAMPLE_CARD} not found); write one with "
                         "`dermkit concepts learn`")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{card_path} is not readable JSON ({exc})") from exc
    if not isinstance(card, dict) or card.get("format") != EXAMPLE_CONCEPTS_FORMAT:
        raise ModelError(f"{card_path} is not a dermkit learned-concepts file (format {EXAMPLE_CONCEPTS_FORMAT!r})")
    return ExampleConcepts.from_card(card, load_tensors(folder / _EXAMPLE_WEIGHTS).get("vectors"), str(folder))
