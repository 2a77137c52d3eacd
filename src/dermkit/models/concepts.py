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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from dermkit.errors import DataError
from dermkit.inputs import MAX_YAML_CHARS, load_yaml, read_text

__all__ = ["Vocabulary", "load_vocabulary", "vocabulary_embeddings", "name_latents", "nearest_latents"]


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
