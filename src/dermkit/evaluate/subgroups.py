"""Does the model work equally across skin types, sexes, ages and body sites? Subgroup tables.

``subgroup_labels`` turns metadata columns into one subgroup label per prediction row:

* a categorical column (``sex``, ``localization``) is used as is;
* a numeric column is cut into bands: ``--bins age:30,45,60,75`` (cut points; bands
  ``<30``, ``[30, 45)``, ..., ``>=75``) or the defaults in :data:`DEFAULT_BINS` (``age``);
  ``NAME_band`` asks for the bands of ``NAME`` (``age_band``); a numeric column with at most
  :data:`MAX_NUMERIC_LEVELS` distinct values and no bins (a Fitzpatrick type 1-6) is used as is;
* common spellings are resolved through :data:`ALIASES` (``fitzpatrick`` finds PAD-UFES-20's
  ``fitspatrick``, ``sex`` finds ``gender``, ``localization`` finds ``region``);
* a missing value is its own subgroup, ``missing``: never dropped, never merged.

``subgroup_analysis`` reports per subgroup: n, balanced accuracy, macro AUC and melanoma
sensitivity at the overall operating point (the ``prediction`` column, i.e. the same decision
rule for everyone: no threshold is re-tuned per subgroup), each with a percentile bootstrap CI.
Subgroups with fewer than ``min_cases`` cases (or, for melanoma sensitivity, fewer than
``min_melanomas`` melanomas) are shown and flagged, never merged. Per attribute and metric the
*gap* is worst minus best (so <= 0 for these higher-is-better metrics) between the worst and
the best subgroup by point estimate, among the unflagged subgroups other than ``missing``, with
its own bootstrap CI and two-sided p-value. All CIs use the same resamples of the whole
evaluation set (stratified by class, whole lesions/patients when the table has a ``group``
column), so the two subgroups of a gap are resampled jointly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .. import io
from ..errors import ConfigError, DataError
from ..values import missing_mask
from .bootstrap import WeightedHeadline, bootstrap_p_value, percentile_ci, resample_indices, resample_weights
from .metrics import classification_metrics, melanoma_index, quiet
from .predictions import prediction_arrays
from .tables import format_metric, markdown_table, percent_ci, with_ci

__all__ = ["ALIASES", "DEFAULT_BINS", "MIN_CASES", "MIN_MELANOMAS", "SUBGROUP_METRICS", "attach_metadata",
           "parse_bins", "parse_subgroups", "save_subgroups", "subgroup_analysis", "subgroup_labels",
           "subgroup_table", "subgroups_markdown", "suite_columns"]

#: Default cut points of numeric columns (bands <30, [30, 45), [45, 60), [60, 75), >=75 years).
DEFAULT_BINS: dict[str, tuple[float, ...]] = {"age": (30.0, 45.0, 60.0, 75.0)}
#: Names a subgroup may be asked for by, and the metadata columns tried for it (first found wins).
ALIASES: dict[str, tuple[str, ...]] = {
    "fitzpatrick": ("fitzpatrick", "fitspatrick", "fitzpatrick_type", "fitzpatrick_skin_type", "skin_type"),
    "monk": ("monk_skin_tone", "monk", "monk_scale", "mst"),
    "sex": ("sex", "gender"),
    "localization": ("localization", "location", "region", "anatom_site_general", "site"),
    "age": ("age", "age_approx"),
}
#: Subgroups with fewer cases are flagged.
MIN_CASES = 30
#: Melanoma sensitivity of a subgroup with fewer melanomas is flagged.
MIN_MELANOMAS = 5
#: A numeric column with at most this many distinct values and no bins is used as categories.
MAX_NUMERIC_LEVELS = 10
#: Metrics of the subgroup table (label, higher is better).
SUBGROUP_METRICS = {"balanced_accuracy": "Balanced accuracy", "macro_auc": "Macro AUC",
                    "melanoma_sensitivity": "Melanoma sensitivity"}
MISSING = "missing"
_CHUNK = 200


# ----------------------------------------------------------------------------- options


def parse_subgroups(text: str | Sequence[str] | None) -> list[str]:
    """``"sex, age_band"`` (or a list) -> ``["sex", "age_band"]``; refuses an empty list and repeats."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else [t for part in text for t in str(part).split(",")]
    names = [t.strip() for t in items if t.strip()]
    if not names:
        raise ConfigError("--subgroups is empty; give metadata columns separated by commas, e.g. sex,age_band")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"--subgroups names {', '.join(repeated)} more than once; list each attribute once")
    return names


def parse_bins(specs: str | Sequence[str] | None) -> dict[str, tuple[float, ...]]:
    """``["age:30,45,60,75", "diameter_1:5,10"]`` (or one ``;``-separated text) -> cut points per column."""
    if specs is None:
        return {}
    items = specs.split(";") if isinstance(specs, str) else [t for s in specs for t in str(s).split(";")]
    out: dict[str, tuple[float, ...]] = {}
    for item in (i.strip() for i in items):
        if not item:
            continue
        column, sep, edges = item.partition(":")
        column = column.strip().removesuffix("_band")
        if not sep or not column:
            raise ConfigError(f"--bins {item!r}: write COLUMN:EDGE,EDGE,..., e.g. --bins age:30,45,60,75")
        try:
            values = tuple(float(v) for v in edges.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"--bins {item!r}: the cut points must be numbers separated by commas, "
                              "e.g. age:30,45,60,75") from None
        if not values or any(not math.isfinite(v) for v in values) or list(values) != sorted(set(values)):
            raise ConfigError(f"--bins {item!r}: give at least one finite cut point, in increasing order, "
                              "each once")
        if column in out:
            raise ConfigError(f"--bins gives {column!r} twice; give each column once")
        out[column] = values
    return out


# ----------------------------------------------------------------------------- labels


def attach_metadata(frame: pd.DataFrame, metadata: pd.DataFrame, where: str | None = None) -> pd.DataFrame:
    """``frame`` with the metadata columns it lacks, joined by ``image``.

    Every prediction row must find its image in ``metadata`` (DataError naming the first one and
    ``where``, by default ``metadata.attrs["source"]``, e.g. the card's metadata.csv).
    """
    where = where or metadata.attrs.get("source") or "the dataset's metadata.csv"
    if "image" not in metadata.columns:
        raise DataError(f"{where} has no 'image' column to link the predictions to")
    table = metadata.drop_duplicates("image").set_index(metadata.drop_duplicates("image")["image"].astype(str))
    images = frame["image"].astype(str)
    unknown = ~images.isin(table.index)
    if unknown.any():
        first = images[unknown].iloc[0]
        raise DataError(f"prediction row {int(np.flatnonzero(unknown.to_numpy())[0]) + 1}: image {first!r} is not in "
                        f"{where} ({int(unknown.sum())} of {len(images)} images unknown); give the dataset the "
                        "predictions were made on (--data), with image paths relative to its folder")
    extra = [c for c in table.columns if c not in frame.columns and c != "image"]
    joined = table.loc[images.to_numpy(), extra].reset_index(drop=True)
    out = pd.concat([frame.reset_index(drop=True), joined], axis=1)
    out.attrs = dict(frame.attrs)
    return out


def _resolve(name: str, columns: Sequence[str], bins: Mapping) -> tuple[str, bool]:
    """(metadata column, banded) for an attribute name."""
    banded = name.endswith("_band")
    base = name.removesuffix("_band") if banded else name
    candidates = [base, *ALIASES.get(base, ())]
    for alias, spellings in ALIASES.items():
        if base in spellings:
            candidates += [alias, *spellings]
    candidates = list(dict.fromkeys(candidates))
    for column in candidates:
        if column in columns:
            return column, banded or column in bins or base in bins
    others = f" (nor {', '.join(repr(c) for c in candidates[1:])})" if len(candidates) > 1 else ""
    found = (f"the columns are {', '.join(sorted(map(str, columns)))}" if len(columns) else
             "the predictions carry no metadata columns: give the dataset they were made on (--data)")
    raise ConfigError(f"--subgroups {name!r}: no metadata column {base!r}{others}; {found}")


def _number(value: float) -> str:
    return f"{value:g}"


def _band_labels(edges: Sequence[float]) -> list[str]:
    labels = [f"<{_number(edges[0])}"]
    labels += [f"[{_number(a)}, {_number(b)})" for a, b in zip(edges[:-1], edges[1:])]
    return labels + [f">={_number(edges[-1])}"]


def subgroup_labels(frame: pd.DataFrame, attributes: Sequence[str], bins: Mapping[str, Sequence[float]] | None = None,
                    missing_values: Sequence[str] = ()) -> tuple[pd.DataFrame, dict[str, dict]]:
    """``(labels, how)``: one text label per row and attribute, and how each attribute was built.

    ``labels`` has one column per attribute (in order); ``how[attribute]`` has ``column``,
    ``kind`` (``categorical`` / ``bands`` / ``numeric values``) and, for bands, ``edges`` and the
    band ``order``. ``missing_values`` are texts read as missing besides the usual tokens (a
    card's ``missing_values``, e.g. HAM10000's ``unknown``).
    """
    extra_missing = {str(v).strip() for v in missing_values}
    bins = {str(k).removesuffix("_band"): tuple(v) for k, v in (bins or {}).items()}
    labels, how = {}, {}
    reserved = {"image", "target", "prediction", "group"}
    for name in attributes:
        column, banded = _resolve(name, [c for c in frame.columns if c not in reserved
                                         and not str(c).startswith("prob:")], bins)
        values = frame[column]
        missing = np.array(missing_mask(values), dtype=bool)  # the usual tokens (case-insensitive)
        missing |= values.astype(str).str.strip().isin(extra_missing).to_numpy()  # the card's own, as spelled
        numbers = pd.to_numeric(values.where(~missing), errors="coerce")
        numeric = bool((~missing).any()) and not numbers[~missing].isna().any()
        base = name.removesuffix("_band")
        edges = bins.get(column) or bins.get(base) or DEFAULT_BINS.get(column) or DEFAULT_BINS.get(base)
        if banded and not numeric:
            bad = values[~missing & numbers.isna()].iloc[0] if (~missing & numbers.isna()).any() else None
            raise ConfigError(f"--subgroups {name!r}: column {column!r} is not numeric (e.g. {bad!r}), so it cannot "
                              f"be cut into bands; ask for {column!r} itself")
        if numeric and (banded or edges is not None or numbers[~missing].nunique() > MAX_NUMERIC_LEVELS):
            if edges is None:
                raise ConfigError(f"--subgroups {name!r}: column {column!r} is numeric with "
                                  f"{numbers[~missing].nunique()} distinct values; give bands with "
                                  f"--bins {column}:EDGE,EDGE,... (cut points, e.g. --bins {column}:10,20,40)")
            names = _band_labels(edges)
            index = np.searchsorted(np.asarray(edges, dtype=float), numbers.to_numpy(dtype=float), side="right")
            text = np.array([names[i] for i in np.clip(index, 0, len(names) - 1)], dtype=object)
            how[name] = {"column": column, "kind": "bands", "edges": list(edges), "order": names + [MISSING]}
        elif numeric:
            text = np.array([_number(v) if np.isfinite(v) else "" for v in numbers.fillna(np.nan)], dtype=object)
            order = [_number(v) for v in sorted(numbers[~missing].unique())]
            how[name] = {"column": column, "kind": "numeric values", "order": order + [MISSING]}
        else:
            text = np.array([str(v).strip() for v in values], dtype=object)
            how[name] = {"column": column, "kind": "categorical"}
        text[missing] = MISSING
        labels[name] = text
    return pd.DataFrame(labels, index=frame.index), how


# ----------------------------------------------------------------------------- analysis


def _level_order(values: np.ndarray, how: dict) -> list[str]:
    present = list(dict.fromkeys(values.tolist()))
    if "order" in how:
        return [v for v in how["order"] if v in present]
    counts = pd.Series(values).value_counts()
    named = sorted((v for v in present if v != MISSING), key=lambda v: (-counts[v], v))
    return named + ([MISSING] if MISSING in present else [])


class _Subset:
    """Point estimates and resample values of the subgroup metrics on one subset of rows."""

    def __init__(self, mask, y_true, proba, y_pred, classes, mel):
        self.mask = np.asarray(mask, dtype=bool)
        y, p, d = y_true[self.mask], proba[self.mask], y_pred[self.mask]
        self.n = int(self.mask.sum())
        self.n_mel = int((y == mel).sum()) if mel is not None else 0
        with quiet():
            metrics = classification_metrics(y, p, classes, d)
        self.point = {"balanced_accuracy": metrics["balanced_accuracy"], "macro_auc": metrics["macro_auc"],
                      "melanoma_sensitivity": (metrics["per_class"][classes[mel]]["sensitivity"]
                                               if mel is not None else float("nan"))}
        self.headline = WeightedHeadline(y, p, d)
        self.is_mel = (y == mel).astype(float) if mel is not None else None
        self.hit = ((y == mel) & (d == mel)).astype(float) if mel is not None else None
        self.samples: dict[str, list] = {k: [] for k in SUBGROUP_METRICS}

    def add(self, weights: np.ndarray) -> None:
        w = weights[:, self.mask]
        with quiet():
            values = self.headline(w)
            self.samples["balanced_accuracy"].append(values["balanced_accuracy"])
            self.samples["macro_auc"].append(values["macro_auc"])
            if self.is_mel is not None:
                mel = w @ self.is_mel
                sensitivity = np.where(mel > 0, (w @ self.hit) / np.where(mel > 0, mel, 1), np.nan)
                self.samples["melanoma_sensitivity"].append(sensitivity)
            else:
                self.samples["melanoma_sensitivity"].append(np.full(len(w), np.nan))

    def values(self, key: str) -> np.ndarray:
        return np.concatenate(self.samples[key]) if self.samples[key] else np.zeros(0)


def subgroup_analysis(frame: pd.DataFrame, labels: pd.DataFrame, how: Mapping[str, dict] | None = None,
                      n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95, min_cases: int = MIN_CASES,
                      min_melanomas: int = MIN_MELANOMAS, positive_class: str | None = None) -> dict:
    """Per-subgroup metrics with CIs and the worst-minus-best gaps, for a validated predictions table.

    ``frame``: a table from ``read_predictions``; ``labels``: ``subgroup_labels``' first result
    (same rows). Returns a JSON-able dict (see the module docstring) with ``overall``,
    ``attributes`` (per attribute: ``levels`` and ``gaps``) and the settings.
    """
    if len(labels) != len(frame):
        raise DataError(f"subgroup labels have {len(labels)} rows, the predictions {len(frame)}")
    how = dict(how or {})
    classes, y_true, proba, y_pred = prediction_arrays(frame)
    mel = melanoma_index(classes, positive_class)
    groups = frame["group"].to_numpy() if "group" in frame.columns else None

    overall = _Subset(np.ones(len(frame), bool), y_true, proba, y_pred, classes, mel)
    subsets: list[tuple[str, str, _Subset]] = []
    for attribute in labels.columns:
        values = labels[attribute].to_numpy(dtype=object)
        for level_name in _level_order(values, how.get(attribute, {})):
            subsets.append((attribute, level_name, _Subset(values == level_name, y_true, proba, y_pred, classes, mel)))

    indices = resample_indices(y_true, groups, n=int(n_bootstrap), seed=seed)
    done = 0
    while done < n_bootstrap:
        batch = [next(indices) for _ in range(min(_CHUNK, n_bootstrap - done))]
        weights = resample_weights(batch, len(y_true))
        for s in [overall, *(s for _, _, s in subsets)]:
            s.add(weights)
        done += len(batch)

    def ci(values) -> dict:
        return percentile_ci(values, level) if len(values) else {"low": float("nan"), "high": float("nan"),
                                                                 "level": level}

    def block(s: _Subset) -> dict:
        return {"metrics": dict(s.point), "ci": {k: ci(s.values(k)) for k in SUBGROUP_METRICS}}

    result = {"overall": {"n": overall.n, "n_melanoma": overall.n_mel, **block(overall)}, "attributes": [],
              "metrics": list(SUBGROUP_METRICS), "melanoma_class": None if mel is None else classes[mel],
              "min_cases": int(min_cases), "min_melanomas": int(min_melanomas),
              "operating_point": "the prediction column (same decision rule for every subgroup)",
              "bootstrap": {"n": int(n_bootstrap), "seed": seed, "grouped": groups is not None, "stratified": True,
                            "level": level}}
    for attribute in labels.columns:
        mine = [(name, s) for a, name, s in subsets if a == attribute]
        levels = []
        for name, s in mine:
            flags = []
            if s.n < min_cases:
                flags.append(f"n < {min_cases}")
            if mel is not None and s.n_mel < min_melanomas:
                flags.append(f"< {min_melanomas} melanomas")
            n_groups = int(pd.Series(groups[s.mask]).nunique()) if groups is not None else None
            levels.append({"level": name, "n": s.n, "n_groups": n_groups, "n_melanoma": s.n_mel, "flags": flags,
                           **block(s)})
        gaps = {}
        for key in SUBGROUP_METRICS:
            eligible = [(name, s) for name, s in mine if name != MISSING and s.n >= min_cases
                        and (key != "melanoma_sensitivity" or (mel is not None and s.n_mel >= min_melanomas))
                        and np.isfinite(s.point[key])]
            if len(eligible) < 2:
                gaps[key] = {"gap": float("nan"), "worst": None, "best": None, "ci": ci([]), "p": float("nan"),
                             "compared": [n for n, _ in eligible],
                             "note": "fewer than two subgroups large enough to compare"}
                continue
            worst_name, worst = min(eligible, key=lambda item: item[1].point[key])
            best_name, best = max(eligible, key=lambda item: item[1].point[key])
            diff = worst.values(key) - best.values(key)
            gaps[key] = {"gap": worst.point[key] - best.point[key], "worst": worst_name, "best": best_name,
                         "ci": ci(diff), "p": bootstrap_p_value(diff), "compared": [n for n, _ in eligible]}
        result["attributes"].append({"attribute": attribute, **how.get(attribute, {"kind": "given"}),
                                     "levels": levels, "gaps": gaps})
    return result


# ----------------------------------------------------------------------------- output


def subgroup_table(result: dict) -> pd.DataFrame:
    """One row per subgroup (and an ``overall`` row): n, melanomas, flags, metrics with CI bounds."""
    rows = []

    def row(attribute, level, entry, flags):
        out = {"attribute": attribute, "level": level, "n": entry["n"], "n_melanoma": entry["n_melanoma"],
               "flag": "; ".join(flags)}
        for key in SUBGROUP_METRICS:
            out[key] = entry["metrics"][key]
            out[f"{key}_low"] = entry["ci"][key]["low"]
            out[f"{key}_high"] = entry["ci"][key]["high"]
        return out

    rows.append(row("overall", "all", result["overall"], []))
    for a in result["attributes"]:
        for level in a["levels"]:
            rows.append(row(a["attribute"], level["level"], level, level["flags"]))
    return pd.DataFrame(rows)


def gap_table(result: dict) -> pd.DataFrame:
    """One row per attribute and metric: worst, best, gap (worst - best) with CI and p."""
    rows = []
    for a in result["attributes"]:
        for key, g in a["gaps"].items():
            rows.append({"attribute": a["attribute"], "metric": key, "worst": g["worst"], "best": g["best"],
                         "gap": g["gap"], "gap_low": g["ci"]["low"], "gap_high": g["ci"]["high"], "p": g["p"]})
    return pd.DataFrame(rows)


def subgroups_markdown(result: dict, heading: str = "##") -> str:
    """Markdown: the subgroup table (value (CI) per metric) and the gaps, with how they were made."""
    labels = list(SUBGROUP_METRICS.values())
    lines = [f"{heading} Subgroups", "",
             f"Metrics per subgroup with {result['bootstrap']['level']:.0%} bootstrap CIs "
             f"({result['bootstrap']['n']} resamples of the whole set"
             + (", whole lesions/patients" if result["bootstrap"]["grouped"] else "") + "). Melanoma sensitivity "
             f"(class {result['melanoma_class']!r}) at the overall operating point: "
             f"{result['operating_point']}. Flagged: n < {result['min_cases']} (or fewer than "
             f"{result['min_melanomas']} melanomas for the sensitivity); shown, never merged. The gap is worst "
             "minus best among the unflagged subgroups other than 'missing', with its own CI and p-value.", ""]
    if result["melanoma_class"] is None:
        lines[2] = lines[2].replace(f"(class {result['melanoma_class']!r})", "(no melanoma class: n/a)")

    def cells(entry):
        return [with_ci(entry["metrics"][k], entry["ci"][k]["low"], entry["ci"][k]["high"]) for k in SUBGROUP_METRICS]

    rows = [["overall", "all", result["overall"]["n"], result["overall"]["n_melanoma"], *cells(result["overall"]), ""]]
    for a in result["attributes"]:
        for level in a["levels"]:
            rows.append([a["attribute"], level["level"], level["n"], level["n_melanoma"], *cells(level),
                         "; ".join(level["flags"])])
    lines += [markdown_table(["Attribute", "Subgroup", "n", "Melanomas", *labels, "Flag"], rows)]
    gap_rows = []
    for a in result["attributes"]:
        for key, g in a["gaps"].items():
            if g["worst"] is None:
                gap_rows.append([a["attribute"], SUBGROUP_METRICS[key], "n/a", "", "", g.get("note", "")])
                continue
            gap_rows.append([a["attribute"], SUBGROUP_METRICS[key], with_ci(g["gap"], g["ci"]["low"], g["ci"]["high"]),
                             f"{g['worst']} vs {g['best']}", format_metric(g["p"]), ""])
    lines += [f"{heading}# Worst minus best subgroup", "",
              markdown_table(["Attribute", "Metric", "Gap (CI)", "Worst vs best", "p", "Note"], gap_rows)]
    how = [f"- {a['attribute']}: column `{a.get('column', a['attribute'])}`, {a.get('kind', 'given')}"
           + (f" (cut points {', '.join(_number(e) for e in a['edges'])})" if a.get("edges") else "")
           for a in result["attributes"]]
    return "\n".join(lines + how) + "\n"


def forest_figure(result: dict, title: str | None = None):
    """The forest plot of ``subgroup_analysis``' result (one panel per metric)."""
    from . import plots  # matplotlib is slow to import

    table = subgroup_table(result)
    rows = table[table["attribute"] != "overall"].to_dict("records")
    for r in rows:  # hollow markers: too few cases (every metric) or too few melanomas (sensitivity)
        few_cases = r["n"] < result["min_cases"]
        few_mel = r["n_melanoma"] < result["min_melanomas"]
        r["flag"] = "few cases" if few_cases else ""
        for key in SUBGROUP_METRICS:
            r[f"{key}_flag"] = few_cases or (key == "melanoma_sensitivity" and few_mel)
    overall = {k: result["overall"]["metrics"][k] for k in SUBGROUP_METRICS}
    return plots.plot_forest(rows, list(SUBGROUP_METRICS.items()), overall=overall, title=title)


def save_subgroups(result: dict, out_dir: str | os.PathLike, title: str | None = None) -> Path:
    """Write subgroups.json, subgroups.csv, subgroup_gaps.csv, subgroups.md and subgroups_forest.png."""
    out = Path(out_dir)
    fig, text = forest_figure(result, title), subgroups_markdown(result, heading="#")
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(out / "subgroups.json", result)
    io.write_csv(out / "subgroups.csv", subgroup_table(result))
    io.write_csv(out / "subgroup_gaps.csv", gap_table(result))
    io.write_text(out / "subgroups.md", text)
    io.save_figure(out / "subgroups_forest.png", fig)
    return out


def suite_columns(result: dict, metric: str = "balanced_accuracy") -> dict[str, str]:
    """Suite-table cells (in %): per attribute, the worst-minus-best gap of ``metric`` with its CI
    and the two subgroups, e.g. ``{"ΔBACC sex": "-7.3 [-16.4, 4.2] male vs female"}``."""
    short = {"balanced_accuracy": "BACC", "macro_auc": "AUC", "melanoma_sensitivity": "MEL-SENS"}[metric]
    out = {}
    for a in result["attributes"]:
        g = a["gaps"][metric]
        out[f"Δ{short} {a['attribute']}"] = ("n/a" if g["worst"] is None else
                                             f"{percent_ci(g['gap'], g['ci'])} {g['worst']} vs {g['best']}")
    return out
