"""The concept-bias experiment from one config: does switching off a shortcut's concepts remove it?

PanDerm-2's artefact test, reproduced where no artefact labels exist
(``dermkit concepts bias-experiment configs/concepts/bias_experiment.yaml --out DIR``):

1. ``data/artefacts.biased_copies`` draws a synthetic artefact (purple ink) on ``fraction`` of the
   positive train/val images (``biased/``, test clean) and of the negative test images
   (``biased_test/``), so a model that learned the shortcut fails on ``biased_test``;
2. an SAE (``method: sae``, the ``sae:`` keys) on the biased train embeddings of ``model``;
   with ``learn_artefact: true``, also the artefact as a concept learned from examples: the unit
   mean difference between the embeddings of the inked train/val copies and their own clean
   originals (a paired concept activation vector, ``learned/``; train/val only);
3. two CBMs (``method: cbm``, the ``cbm:`` keys) on that SAE: one trained on the biased data, one on
   the clean data (the reference); with ``learn_artefact``, both hold the learned concept next to the
   SAE's latents, which then read the embedding without its direction (``example_concepts:``);
4. both on the test split of ``biased_test``; then the biased CBM after interventions:
   switching off the learned artefact concept (with ``learn_artefact``), zeroing the ``per_query``
   concepts nearest the text ``query`` (what a user does with names), and
   zeroing the CBM's *ink concepts* (SAE latents; a learned concept has its own row): those whose
   activation separates the inked train/val images
   from their own clean originals (paired, so the diagnosis does not confound it) with AUROC >=
   ``ink_auroc`` (chosen on train/val, where the artefact was drawn; the test split is never used
   to choose); ``ink_auroc_sensitivity: [0.7]`` adds rows at lower thresholds (a dose-response
   view; the diagnosis ignores them); and zeroing the CBM's *shortcut concepts*: the fewest concepts
   that carry ``shortcut_share`` (0.8) of the mean paired shift of its logit margin from a clean
   original to its inked copy (train/val pairs again), the concepts the shortcut runs through
   whether or not they are ink-specific;
5. a diagnosis of what failed when the best intervention recovers less than half of the gap
   (biased -> clean AUROC on ``biased_test``): the SAE never isolated the artefact (no latent
   separates inked from clean copies), the CBM does not use the latents that do, the naming missed
   them (the text query picks other latents), or the CBM spread the shortcut over many concepts.

Writes ``bias_experiment.md`` / ``.json`` (the table and the diagnosis), ``ink_latents.csv`` and the
runs (``data/``, ``sae/``, ``learned/``, ``cbm_biased/``, ``cbm_clean/``) under ``out``. Above the experiment layer:
it runs configs as ``dermkit run`` does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dermkit import io
from dermkit.data.artefacts import ARTEFACTS, DEFAULT_SEVERITY, biased_copies
from dermkit.data.card import load_card
from dermkit.engine.features import extract_features
from dermkit.errors import ConfigError, excerpt
from dermkit.evaluate import evaluate
from dermkit.evaluate.tables import markdown_table, percent_ci
from dermkit.experiment import load_config, run_experiment
from dermkit.methods import load_predictor
from dermkit.methods.cbm import ABLATIONS, NoConceptMatch, load_sae_folder, resolve_latents
from dermkit.models.concepts import QUERY_MIN_SIMILARITY, ExampleConcepts, concept_direction
from dermkit.models.text import encode_texts

__all__ = ["BIAS_KEYS", "ink_latent_scores", "learn_artefact", "load_bias_config", "run_bias_experiment",
           "shortcut_concepts"]

#: Keys of a bias-experiment config, with their defaults (None: required).
BIAS_KEYS: dict[str, Any] = {
    "model": None, "data": None, "task": "melanoma_vs_rest", "artefact": "ink", "severity": DEFAULT_SEVERITY,
    "fraction": 0.8, "seed": 0,
    "sae": {}, "cbm": {}, "query": "purple ink", "per_query": [1, 5, 20], "ink_auroc": 0.8,
    "ink_auroc_sensitivity": [], "shortcut_share": 0.8, "ablation": "zero", "n_bootstrap": 1000,
    "query_min_similarity": QUERY_MIN_SIMILARITY, "learn_artefact": False,
}
_MANAGED = {"sae": ("method", "model", "data", "task"),
            "cbm": ("method", "sae", "data", "task", "eval_data", "example_concepts")}


def load_bias_config(source: str | os.PathLike | dict) -> dict[str, Any]:
    """A bias-experiment config (a YAML file or a mapping) with defaults filled in; ConfigError
    naming the key for anything unknown or out of range."""
    where = str(source) if not isinstance(source, dict) else "config"
    if isinstance(source, dict):
        raw = dict(source)
    else:
        raw = load_config(Path(source).expanduser())
        raw.pop("_source", None)
        raw.pop("name", None)
    kind = raw.pop("experiment", "concept_bias")
    if kind != "concept_bias":
        raise ConfigError(f"{where}: experiment: {kind!r} is not a bias experiment (experiment: concept_bias)")
    unknown = sorted(set(raw) - set(BIAS_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; a bias experiment takes {', '.join(BIAS_KEYS)}")
    config = {k: raw.get(k, v) for k, v in BIAS_KEYS.items()}
    for key in ("model", "data"):
        if not config[key]:
            raise ConfigError(f"{where}: `{key}:` is required")
    if config["artefact"] not in ARTEFACTS:
        raise ConfigError(f"{where}: artefact must be one of {', '.join(ARTEFACTS)}, got {config['artefact']!r}")
    severity = config["severity"]
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ConfigError(f"{where}: severity must be one of 1, 2, 3, 4, 5 (how much artefact is drawn), got "
                          f"{excerpt(severity)}")
    if not 0 < float(config["fraction"]) <= 1:
        raise ConfigError(f"{where}: fraction must be in (0, 1], got {config['fraction']}")
    floor = config["query_min_similarity"]
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not -1 <= floor <= 1:
        raise ConfigError(f"{where}: query_min_similarity must be a cosine in [-1, 1], got {excerpt(floor)}")
    if isinstance(config["ink_auroc"], bool) or not isinstance(config["ink_auroc"], (int, float)) \
            or not 0.5 < float(config["ink_auroc"]) <= 1:
        raise ConfigError(f"{where}: ink_auroc must be in (0.5, 1], got {excerpt(config['ink_auroc'])}")
    if not isinstance(config["learn_artefact"], bool):
        raise ConfigError(f"{where}: learn_artefact must be true or false (learn the artefact as a concept from the "
                          f"inked/clean train/val pairs), got {excerpt(config['learn_artefact'])}")
    if config["ablation"] not in ABLATIONS:
        raise ConfigError(f"{where}: ablation must be one of {', '.join(ABLATIONS)} (how a concept is switched off: "
                          f"its activation set to zero, or to its training mean), got {excerpt(config['ablation'])}")
    share = config["shortcut_share"]
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise ConfigError(f"{where}: shortcut_share must be a fraction in (0, 1] (of the ink's logit shift the zeroed "
                          f"concepts carry), got {excerpt(share)}")
    more = config["ink_auroc_sensitivity"]
    more = [more] if isinstance(more, (int, float)) and not isinstance(more, bool) else more
    if not isinstance(more, list) or not all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                             and 0.5 < t < float(config["ink_auroc"]) for t in more):
        raise ConfigError(f"{where}: ink_auroc_sensitivity must be a list of AUROCs between 0.5 and ink_auroc "
                          f"({config['ink_auroc']}), got {excerpt(more)}")
    config["ink_auroc_sensitivity"] = sorted({float(t) for t in more}, reverse=True)
    per_query = config["per_query"]
    per_query = [per_query] if isinstance(per_query, int) else per_query
    if not isinstance(per_query, list) or not per_query or not all(isinstance(k, int) and k >= 1 for k in per_query):
        raise ConfigError(f"{where}: per_query must be a positive integer or a list of them, got {per_query!r}")
    config["per_query"] = per_query
    for key in ("sae", "cbm"):
        if not isinstance(config[key], dict):
            raise ConfigError(f"{where}: `{key}:` must be a mapping of `method: {key}` config keys")
        managed = sorted(set(config[key]) & set(_MANAGED[key]))
        if managed:
            raise ConfigError(f"{where}: {key}.{managed[0]} is set by the experiment; remove it")
    return config


def _auroc_columns(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC of every column of ``scores`` for ``positive`` vs the rest (ties count half)."""
    from scipy.stats import rankdata

    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(scores.shape[1], np.nan)
    ranks = rankdata(scores, axis=0)
    return (ranks[pos].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _artefact_pairs(biased, source) -> tuple[np.ndarray, list, list]:
    """``(rows, inked paths, clean paths)``: the train/val rows of the biased card that carry the
    artefact, with their images and their clean originals' in the source card."""
    biased, source = load_card(biased), load_card(source)
    table, original = biased.table, source.table
    if len(table) != len(original) or "artefact" not in table.columns:
        raise ConfigError(f"{biased.root} is not a biased copy of {source.root} (`dermkit concepts bias-data`)")
    edited = np.flatnonzero(table["artefact"].fillna("").astype(str).str.len().to_numpy() > 0
                            & table["split"].isin(["train", "val"]).to_numpy())
    if len(edited) < 2:
        raise ConfigError(f"{biased.root}: fewer than 2 train/val images carry the artefact; raise `fraction`")
    return (edited, [biased.image_path(table["image"].iloc[i]) for i in edited],
            [source.image_path(original["image"].iloc[i]) for i in edited])


def learn_artefact(sae_folder, biased, source, name: str, out, progress: bool = False,
                   **kw) -> ExampleConcepts:
    """The artefact as a concept learned from examples: the unit mean of the paired differences between
    the embeddings (by the SAE's encoder) of the inked train/val copies and their clean originals;
    saved to ``out`` for the CBMs' ``example_concepts:``."""
    enc, _, card = load_sae_folder(Path(sae_folder))
    _, inked, clean = _artefact_pairs(biased, source)
    vector, info = concept_direction(extract_features(enc, inked, progress=progress, **kw),
                                     extract_features(enc, clean, progress=progress, **kw), paired=True)
    info.update(source="artefact copies of the biased train/val images vs their clean originals")
    learned = ExampleConcepts([name], vector[None], [info], card.get("base_model"), card.get("base_fingerprint"))
    learned.save(out)
    return learned


def ink_latent_scores(predictor, biased, source, progress: bool = False) -> pd.DataFrame:
    """Per concept of the CBM's bottleneck (every SAE latent, then any concept learned from
    examples): AUROC of its activation for the artefact copies of the biased card's
    train/val images against their own clean originals (one row per latent; ``cbm_weight`` is the
    CBM's largest absolute weight on it, 0 when the CBM does not use it), and ``logit_shift``: its
    contribution to the mean *paired* shift of the CBM's logit margin for the inked class (the class
    of the inked images; its weight minus the mean of the other classes' weights) from a clean
    original to its inked copy. The shifts add up to the CBM's whole mean margin shift: they say
    which concepts carry the shortcut, and how much of it each."""
    biased = load_card(biased)
    edited, inked, clean = _artefact_pairs(biased, source)
    kw = dict(cache_dir=predictor.cache_dir, batch_size=predictor.batch_size, num_workers=predictor.num_workers,
              progress=progress)
    acts = predictor.bank(np.concatenate([extract_features(predictor.enc, inked, **kw),
                                          extract_features(predictor.enc, clean, **kw)]))
    is_inked = np.r_[np.ones(len(edited), bool), np.zeros(len(edited), bool)]
    auroc = _auroc_columns(acts, is_inked)
    probe = predictor.probe
    weight = np.abs(probe.coef).max(axis=0)
    task = predictor.task_card(biased)  # the same rows, relabelled for the CBM's task
    inked_class = int(np.bincount(task.labels(task.table.iloc[edited])).argmax())
    others = [k for k in range(len(probe.coef)) if k != inked_class and np.isfinite(probe.intercept[k])]
    margin = probe.coef[inked_class] - (probe.coef[others].mean(axis=0) if others else 0.0)
    shift = margin / probe.scale * (acts[is_inked] - acts[~is_inked]).mean(axis=0)
    return pd.DataFrame({"latent": np.arange(acts.shape[1]),
                         "concept": [predictor.concept_name(j) for j in range(acts.shape[1])], "ink_auroc": auroc,
                         "mean_inked": acts[is_inked].mean(axis=0), "mean_clean": acts[~is_inked].mean(axis=0),
                         "cbm_weight": weight, "logit_shift": shift}).sort_values("ink_auroc", ascending=False,
                                                                                  kind="stable")


def shortcut_concepts(scores: pd.DataFrame, share: float) -> list[int]:
    """The fewest latents whose ``logit_shift`` (from :func:`ink_latent_scores`) adds up to at least
    ``share`` of the sum of the positive shifts: the concepts the CBM's shortcut runs through, found on
    the train/val pairs (empty when nothing shifts the margin towards the inked class)."""
    positive = scores[scores["logit_shift"] > 0].sort_values("logit_shift", ascending=False, kind="stable")
    total = float(positive["logit_shift"].sum())
    if total <= 0:
        return []
    cumulative = positive["logit_shift"].cumsum().to_numpy() / total
    n = int(np.searchsorted(cumulative, share - 1e-12) + 1)
    return [int(j) for j in positive["latent"].iloc[:n]]


def _test_metrics(predictor, card, n_bootstrap: int, seed: int, progress: bool) -> dict:
    m = evaluate(predictor.predict_split(card, "test", progress=progress), n_bootstrap=n_bootstrap, seed=seed).metrics
    return {"auroc": m.get("macro_auc"), "auroc_ci": m["ci"].get("macro_auc"),
            "balanced_accuracy": m.get("balanced_accuracy"), "balanced_accuracy_ci": m["ci"].get("balanced_accuracy")}


def _recovered(value, biased, clean):
    if value is None or biased is None or clean is None or clean - biased <= 0:
        return None
    return (value - biased) / (clean - biased)


def _diagnosis(result: dict, config: dict) -> str:
    best = max((r["recovered"] for r in result["rows"] if r.get("recovered") is not None and not r.get("sensitivity")),
               default=None)
    d = result["diagnostics"]
    if result["gap"] is None or result["gap"] <= 0:
        return ("the biased CBM is not worse than the clean one on the artefact test split: no shortcut was learned "
                "to remove (raise `fraction`, or the encoder does not see the artefact)")
    if best is not None and best >= 0.5:
        label = next(r.get("model", "") for r in result["rows"] if r.get("recovered") == best
                     and not r.get("sensitivity"))
        return (f"an intervention recovers {best:.0%} of the gap{f' ({label})' if label else ''}: the shortcut is "
                "removable by switching concepts off")
    learned = _learned_failure(result, d.get("learned"))
    sae = _sae_failure(result, config)
    return f"{learned}; among the discovered concepts, {sae}" if learned else sae


def _sae_failure(result: dict, config: dict) -> str:
    """Which step of the discovered-concept pipeline kept the shortcut in (SAE, CBM, naming, spread)."""
    threshold = config["ink_auroc"]
    d = result["diagnostics"]
    if d["best_ink_auroc"] < threshold:
        return (f"the SAE never isolated the artefact: no latent separates inked copies from their clean originals "
                f"with AUROC >= {threshold} (best {d['best_ink_auroc']:.3f}, latent {d['best_ink_latent']})")
    if d["cbm_ink_concepts"] == 0:
        return (f"the SAE isolated the artefact ({d['ink_latents']} latents with AUROC >= {threshold}) but the CBM "
                "gives none of them weight: the shortcut runs through latents that also carry lesion content")
    if d["best_ink_rank_for_query"] is None:
        return (f"the CBM uses {d['cbm_ink_concepts']} ink latent(s) ({d['cbm_ink_weight_share']:.0%} of its weight), "
                "but zeroing them recovers less than half of the gap, and the encoder has no text tower to find "
                "concepts by name")
    def recovered(rule):
        value = next((r.get("recovered") for r in result["rows"] if r.get("rule") == rule), None)
        return 0.0 if value is None else value

    spread = (f"the CBM spread the shortcut: zeroing its {d['cbm_ink_concepts']} ink concepts (which hold "
              f"{d['cbm_ink_weight_share']:.0%} of its weight) recovers {recovered('ink_auroc'):.0%} of the gap")
    if d.get("shortcut_concepts"):
        spread += (f"; the {len(d['shortcut_concepts'])} concepts that carry {d['shortcut_share']:.0%} of the ink's "
                   f"logit shift hold {d['shortcut_weight_share']:.0%} of its weight, and zeroing them recovers "
                   f"{recovered('shortcut'):.0%}")
    spread += "; the rest of the shortcut sits in concepts that are not ink-specific"
    if not d["query_hits"]:
        return (f"the naming missed it: the concepts nearest the text {config['query']!r} are not the ink latents "
                f"(the best ink latent ranks {d['best_ink_rank_for_query']} by text similarity); and {spread}")
    return spread


def _learned_failure(result: dict, learned: dict | None) -> str | None:
    """Why switching off the concept learned from the pairs did not remove the shortcut (None: no such
    concept in the experiment)."""
    if not learned:
        return None
    row = next((r for r in result["rows"] if r.get("rule") == "learned"), {})
    share = learned.get("shift_share")
    head = (f"switching off the concept learned from the inked/clean pairs ({learned['name']!r}, paired AUROC "
            f"{learned['pair_auroc']:.3f}) recovers {(row.get('recovered') or 0):.0%} of the gap")
    if not learned["used_by_cbm"]:
        return head + ": the biased CBM gives it no weight, so the shortcut runs through the SAE's latents"
    return (head + f"; it carries {share:.0%} of the ink's logit shift on the train/val pairs, the rest runs through "
            "what its one direction does not capture" if share is not None else head)


def run_bias_experiment(source: str | os.PathLike | dict, out: str | os.PathLike, progress: bool = True,
                        force: bool = False) -> dict:
    """Run the whole experiment of one config into ``out`` (see the module doc); returns the result."""
    config = load_bias_config(source)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out} is not empty; choose another --out or pass --force to replace its runs")
    seed, nb = int(config["seed"]), int(config["n_bootstrap"])
    biased, biased_test = biased_copies(config["data"], out / "data", kind=config["artefact"],
                                        fraction=float(config["fraction"]), seed=seed, severity=config["severity"])
    common = {"task": config["task"], "n_bootstrap": nb}
    run_experiment({**config["sae"], **common, "method": "sae", "model": str(config["model"]), "data": str(biased)},
                   out / "sae", progress=progress, force=force)
    sae_model = str(out / "sae" / "model")
    cbm_extra = {}
    if config["learn_artefact"]:
        learn_artefact(sae_model, biased, config["data"], config["artefact"], out / "learned", progress=progress,
                       cache_dir=config["cbm"].get("cache_dir"))
        cbm_extra["example_concepts"] = str(out / "learned")
    for name, data in (("cbm_biased", biased), ("cbm_clean", config["data"])):
        run_experiment({**config["cbm"], **common, **cbm_extra, "method": "cbm", "sae": sae_model, "data": str(data)},
                       out / name, progress=progress, force=force)
    cbm_biased, cbm_clean = (load_predictor(out / n / "model") for n in ("cbm_biased", "cbm_clean"))
    test_card = cbm_biased.task_card(biased_test)

    rows = []

    def add(label: str, predictor, zeroed=()):
        metrics = _test_metrics(predictor, test_card, nb, seed, progress)
        rows.append({"model": label, "zeroed": [int(z) for z in zeroed], **metrics})
        return metrics

    clean = add("CBM trained on clean data", cbm_clean)
    biased_m = add("CBM trained on the biased data", cbm_biased)
    gap = None if clean["auroc"] is None or biased_m["auroc"] is None else clean["auroc"] - biased_m["auroc"]

    concept_ids = [int(c["latent"]) for c in cbm_biased.concepts]
    ablation = config["ablation"]
    n_latents = cbm_biased.sae.n_latents
    learned = list(range(n_latents, cbm_biased.n_concepts))
    if learned:  # the artefact learned from the train/val pairs: switched off by its name
        add(f"biased + switch off the concept learned from inked/clean pairs ({config['artefact']!r})",
            cbm_biased.with_zeroed(learned, ablation), learned)
        rows[-1]["rule"] = "learned"
    has_text = bool(getattr(cbm_biased.enc, "has_text", False))
    tried: set[tuple[int, ...]] = set()
    for k in config["per_query"] if has_text else ():  # an image-only encoder cannot match a text query
        try:
            chosen = [c["latent"] for c in resolve_latents(cbm_biased, [config["query"]], per_query=k,
                                                           min_similarity=config["query_min_similarity"])]
        except NoConceptMatch:  # the query names no concept: nothing to zero (the diagnosis says the naming missed)
            break
        if tuple(chosen) in tried:  # fewer concepts pass the similarity floor than asked for: already a row
            continue
        tried.add(tuple(chosen))
        add(f"biased + zero the {len(chosen)} concept(s) nearest {config['query']!r}",
            cbm_biased.with_zeroed(chosen, ablation), chosen)
        rows[-1]["rule"] = "query"
    scores = ink_latent_scores(cbm_biased, biased, config["data"], progress=progress)
    io.write_csv(out / "ink_latents.csv", scores)
    threshold = float(config["ink_auroc"])
    # The SAE's own ink latents (did the SAE isolate it?); a learned concept has its own row.
    ink = scores[(scores["ink_auroc"] >= threshold) & (scores["latent"] < n_latents)]
    cbm_ink = ink[ink["latent"].isin(concept_ids)]
    if len(cbm_ink):
        add(f"biased + zero its {len(cbm_ink)} ink concept(s) (inked vs clean copies, AUROC >= {threshold}, train/val)",
            cbm_biased.with_zeroed(cbm_ink["latent"].tolist(), ablation), cbm_ink["latent"].tolist())
        rows[-1]["rule"] = "ink_auroc"
    done = {tuple(cbm_ink["latent"].tolist()), tuple(learned)}
    share = float(config["shortcut_share"])
    shortcut = shortcut_concepts(scores, share)
    if shortcut and tuple(shortcut) not in done:
        add(f"biased + zero the {len(shortcut)} concept(s) carrying {share:.0%} of the ink's logit shift "
            "(inked vs clean copies, train/val)", cbm_biased.with_zeroed(shortcut, ablation), shortcut)
        rows[-1]["rule"] = "shortcut"
        done.add(tuple(shortcut))
    for lower in config["ink_auroc_sensitivity"]:  # a dose-response view, never the experiment's verdict
        more = scores[(scores["ink_auroc"] >= lower) & scores["latent"].isin(concept_ids)
                      & (scores["latent"] < n_latents)]["latent"].tolist()
        if not more or tuple(more) in done:
            continue
        done.add(tuple(more))
        add(f"(sensitivity) biased + zero its {len(more)} concept(s) with ink AUROC >= {lower:g}",
            cbm_biased.with_zeroed(more, ablation), more)
        rows[-1].update(sensitivity=True, rule="sensitivity")
    for r in rows:
        r["recovered"] = _recovered(r["auroc"], biased_m["auroc"], clean["auroc"]) if r["zeroed"] else None

    best = scores[scores["latent"] < n_latents].iloc[0]
    query_hits = False
    rank = None
    if has_text:
        q = encode_texts(cbm_biased.enc, [config["query"]]).numpy()[0]
        atoms = cbm_biased.sae.atoms.numpy()
        sim = atoms @ q / np.maximum(np.linalg.norm(atoms, axis=1) * np.linalg.norm(q), 1e-12)
        rank = int((sim > sim[int(best["latent"])]).sum()) + 1
        picked = {z for r in rows if r.get("rule") == "query" for z in r["zeroed"]}
        query_hits = bool(picked & set(ink["latent"].astype(int)))
    total_weight = float(scores["cbm_weight"].sum())
    diagnostics = {
        "best_ink_latent": int(best["latent"]), "best_ink_auroc": float(best["ink_auroc"]),
        "ink_latents": int(len(ink)), "cbm_concepts": len(concept_ids), "cbm_ink_concepts": int(len(cbm_ink)),
        "cbm_ink_weight_share": float(cbm_ink["cbm_weight"].sum() / total_weight) if total_weight > 0 else 0.0,
        "best_ink_rank_for_query": rank, "query_hits": query_hits,
        "best_ink_latent_in_cbm": int(best["latent"]) in concept_ids,
        "shortcut_concepts": shortcut, "shortcut_share": share,
        "shortcut_weight_share": float(scores[scores["latent"].isin(shortcut)]["cbm_weight"].sum() / total_weight)
        if total_weight > 0 else 0.0,
        "logit_shift": float(scores["logit_shift"].sum()),
    }
    if learned:
        by_id = scores.set_index("latent")
        diagnostics["learned"] = {
            "name": config["artefact"], "latents": learned,
            "separation_auroc": cbm_biased.examples.info[0].get("separation_auroc"),
            "pair_auroc": float(by_id.loc[learned[0], "ink_auroc"]),
            "used_by_cbm": any(j in concept_ids for j in learned),
            "weight_share": float(by_id.loc[learned, "cbm_weight"].sum() / total_weight) if total_weight > 0 else 0.0,
            "shift_share": float(by_id.loc[learned, "logit_shift"].sum() / by_id["logit_shift"].sum())
            if by_id["logit_shift"].sum() != 0 else None,
        }
    result = {"config": config, "gap": gap, "rows": rows, "diagnostics": diagnostics,
              "sae": _sae_summary(out / "sae")}
    result["diagnosis"] = _diagnosis(result, config)
    io.write_json(out / "bias_experiment.json", result)
    io.write_text(out / "bias_experiment.md", bias_markdown(result))
    return result


def _sae_summary(run_dir: Path) -> dict:
    """The SAE run's sparsity numbers (its summary.json ``sae`` block)."""
    import json

    path = Path(run_dir) / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    sae = summary.get("sae") or {}
    val = sae.get("val") or {}
    return {k: sae.get(k) for k in ("activation", "k", "n_latents", "activation_reason")} | {
        "val_fvu": val.get("fvu"), "val_mean_l0": val.get("mean_l0"), "dead": (sae.get("train") or {}).get("dead")}


def bias_markdown(result: dict) -> str:
    c = result["config"]
    head = (f"# Concept-bias experiment: {c['artefact']} (severity {c.get('severity', DEFAULT_SEVERITY)}) on "
            f"{c['fraction']:.0%} of the positives\n\n"
            f"Encoder `{c['model']}`, data `{c['data']}` ({c['task']}); test split of `biased_test` (the "
            f"{c['artefact']} on {c['fraction']:.0%} of the negatives). AUROC and balanced accuracy in %, 95% CIs "
            "(grouped bootstrap). Gap recovered = (after - biased) / (clean - biased), AUROC.\n\n")
    table = markdown_table(
        ["model", "AUROC", "BACC", "gap recovered"],
        [[r["model"], percent_ci(r["auroc"], r["auroc_ci"]), percent_ci(r["balanced_accuracy"],
                                                                          r["balanced_accuracy_ci"]),
          "" if r.get("recovered") is None else f"{100 * r['recovered']:.0f}%"] for r in result["rows"]])
    d = result["diagnostics"]
    sae = result.get("sae") or {}
    lines = [
        f"SAE: {sae.get('activation')} (k {sae.get('k')}), {sae.get('n_latents')} latents, val FVU "
        f"{_fmt(sae.get('val_fvu'))}, val mean L0 {_fmt(sae.get('val_mean_l0'), 1)}.",
        f"SAE latents separating inked copies from their clean originals (train/val, AUROC >= {c['ink_auroc']}"
        + ("; they read the embedding without the learned ink direction" if d.get("learned") else "") + "): "
        f"{d['ink_latents']}; best latent {d['best_ink_latent']} (AUROC {d['best_ink_auroc']:.3f}, "
        f"{'used' if d['best_ink_latent_in_cbm'] else 'not used'} by the CBM"
        + (f", rank {d['best_ink_rank_for_query']} by similarity to {c['query']!r}" if d['best_ink_rank_for_query']
           else "") + ").",
        f"The biased CBM uses {d['cbm_concepts']} concepts, {d['cbm_ink_concepts']} of them ink concepts "
        f"({d['cbm_ink_weight_share']:.0%} of its weight).",
        *([f"Concept learned from the inked/clean train/val pairs ({d['learned']['name']!r}, the SAE reading the "
           f"embedding without its direction): paired AUROC {d['learned']['pair_auroc']:.3f}, "
           f"{'used' if d['learned']['used_by_cbm'] else 'not used'} by the biased CBM "
           f"({d['learned']['weight_share']:.0%} of its weight"
           + (f", {d['learned']['shift_share']:.0%} of the ink's logit shift" if d['learned']['shift_share'] is not None
              else "") + ")."] if d.get("learned") else []),
        *([f"The ink moves the biased CBM's margin by {d['logit_shift']:+.3f} on average (train/val pairs); "
           f"{len(d['shortcut_concepts'])} concept(s) carry {d['shortcut_share']:.0%} of that shift "
           f"({d['shortcut_weight_share']:.0%} of the weight): {', '.join(map(str, d['shortcut_concepts']))}."]
          if d.get("shortcut_concepts") else []),
        f"**Diagnosis**: {result['diagnosis']}.",
    ]
    if any(r.get("sensitivity") for r in result["rows"]):
        lines.insert(-1, "Rows marked (sensitivity) zero the CBM's concepts above lower ink-AUROC thresholds "
                         f"(`ink_auroc_sensitivity`) than the experiment's own ({c['ink_auroc']}): a dose-response "
                         "view; "
                         "the diagnosis uses only the rows above. Zeroing concepts that carry most of the weight "
                         "moves every score, so the balanced accuracy at the model's decision threshold can fall "
                         "while AUROC (ranking) recovers.")
    return head + table + "\n" + "\n\n".join(lines) + "\n"


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"
