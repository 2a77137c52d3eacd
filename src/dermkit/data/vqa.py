"""Closed-ended VQA on a dataset card: questions in LLaVA-Med's format, and honest answer parsing.

:func:`write_questions` writes one JSON line per image of a split (``question_id``, ``image``
relative to the dataset folder, ``text``, ``answer``), the options listed from the card's classes
(codes or readable names). :func:`parse_answer` maps a free-text answer to one class with the
reason: every alias of a class (its code, readable name, the card's synonyms, plurals, and the
abbreviations in ``data/vqa/aliases.yaml``, e.g. "scc in situ" -> akiec) counts; mentions under a
negation ("not melanoma", "no signs of melanoma", "free of melanoma") do not; two different classes
make the answer ``ambiguous``; nothing parseable makes it ``invalid``. :func:`score_answers` keeps
every question: a missing, ambiguous or invalid answer is a wrong answer, never a dropped row.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dermkit.errors import DataError
from dermkit.io import write_text

__all__ = ["DEFAULT_TEMPLATE", "NO_ANSWER", "AnswerParser", "option_labels", "question_records", "write_questions",
           "write_instructions", "read_questions", "read_answers", "score_answers"]

DEFAULT_TEMPLATE = "What is the lesion type? Choose one of: {options}."
NO_ANSWER = "(no valid answer)"
NEGATIONS = ("not", "no", "non", "without", "free of", "absence of", "no signs of", "no sign of", "no evidence of",
             "rule out", "ruled out", "unlikely", "excluded", "negative for", "isn't", "is not", "rather than")


def _norm(text: str) -> str:
    text = str(text).lower().replace("’", "'")
    text = re.sub(r"[^a-z0-9']+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _plural(word: str) -> list[str]:
    if word.endswith("us"):  # nevus -> nevi
        return [word[:-2] + "i"]
    if word.endswith(("s", "x", "ch", "sh")):
        return [word + "es"]
    if word.endswith("oma"):
        return [word + "s", word + "ta"]
    return [word + "s"]


@dataclass
class ParsedAnswer:
    parsed: str | None
    status: str  # ok | ambiguous | invalid
    why: str


class AnswerParser:
    """Free text -> one of ``classes`` (see the module docstring), with the reason."""

    def __init__(self, card, aliases_file: str | os.PathLike | None = None):
        self.classes = list(card.classes)
        extra = _packaged_aliases()
        if aliases_file is not None:
            extra = {**extra, **(yaml.safe_load(Path(aliases_file).read_text(encoding="utf-8")) or {})}
        table: dict[str, str] = {}
        for cls in self.classes:
            names = {cls, card.class_names.get(cls, cls), *card.synonyms.get(cls, []), *extra.get(cls, [])}
            for name in names:
                base = _norm(name)
                if not base:
                    continue
                words = base.split()
                for form in [base, *(" ".join(words[:-1] + [p]) for p in _plural(words[-1]))]:
                    if form in table and table[form] != cls:
                        table[form] = "__ambiguous__"  # an alias two classes share never decides
                    else:
                        table[form] = cls
        self.aliases = {k: v for k, v in table.items() if v != "__ambiguous__"}
        ordered = sorted(self.aliases, key=len, reverse=True)  # longest first: "non melanoma" before "melanoma"
        self._pattern = re.compile(r"\b(" + "|".join(re.escape(a) for a in ordered) + r")\b")
        self._negation = re.compile(r"\b(" + "|".join(re.escape(n) for n in sorted(NEGATIONS, key=len, reverse=True))
                                    + r")\b(?: \w+){0,3} $")

    def parse(self, text) -> ParsedAnswer:
        if text is None or (isinstance(text, float) and np.isnan(text)) or not str(text).strip():
            return ParsedAnswer(None, "invalid", "empty answer")
        found, negated = [], []
        # A negation reaches to the end of its clause only ("free of melanoma; consistent with ...").
        for clause in re.split(r"[.;:!?,()]|\bbut\b|\bhowever\b|\bwhereas\b", str(text).lower()):
            norm = _norm(clause)
            for m in self._pattern.finditer(norm):
                cls = self.aliases[m.group(1)]
                before = norm[:m.start()]
                (negated if self._negation.search(before) else found).append((m.group(1), cls))
        classes = sorted({c for _, c in found})
        if len(classes) == 1:
            words = ", ".join(sorted({a for a, _ in found}))
            why = f"names {classes[0]} ({words})"
            if negated:
                why += f"; negated: {', '.join(sorted({a for a, _ in negated}))}"
            return ParsedAnswer(classes[0], "ok", why)
        if len(classes) > 1:
            return ParsedAnswer(None, "ambiguous", "names " + " and ".join(classes))
        if negated:
            mentions = ", ".join(sorted({a for a, _ in negated}))
            return ParsedAnswer(None, "invalid", f"only negated mentions ({mentions})")
        return ParsedAnswer(None, "invalid", "names no class")


def _packaged_aliases() -> dict[str, list[str]]:
    text = resources.files("dermkit.data").joinpath("vqa/aliases.yaml").read_text(encoding="utf-8")
    return {str(k): [str(v) for v in vs] for k, vs in (yaml.safe_load(text) or {}).items()}


def option_labels(card, options: str = "codes") -> list[str]:
    """The answer options, one per class of ``card``: class codes or readable names."""
    if options not in ("codes", "names"):
        raise DataError(f"--options must be codes or names, got {options!r}")
    return [c if options == "codes" else card.class_names.get(c, c) for c in card.classes]


def question_records(card, split: str, options: str = "codes", template: str = DEFAULT_TEMPLATE) -> list[dict]:
    """One closed-ended question per image of ``split``: ``question_id``, ``image`` (relative to
    the dataset folder), ``text`` and ``answer`` (the class code or name)."""
    if "{options}" not in template:
        raise DataError("the question template must contain {options} where the answer options go")
    labels = dict(zip(card.classes, option_labels(card, options)))
    rows = card.rows(split)
    if not len(rows):
        raise DataError(f"split {split!r} of {card.name} has no rows")
    text = template.format(options=", ".join(labels.values()))
    records = [{"question_id": str(Path(str(img)).stem), "image": str(img), "text": text, "answer": labels[diag]}
               for img, diag in zip(rows["image"], rows["diagnosis"])]
    if len({r["question_id"] for r in records}) != len(records):
        records = [{**r, "question_id": str(i)} for i, r in enumerate(records)]
    return records


def write_questions(card, split: str, out: str | os.PathLike, options: str = "codes",
                    template: str = DEFAULT_TEMPLATE) -> Path:
    """LLaVA-Med-style question JSONL for one split (the answer is the class code or name)."""
    records = question_records(card, split, options, template)
    return write_text(out, "\n".join(json.dumps(r) for r in records) + "\n")


def write_instructions(card, split: str, out: str | os.PathLike, options: str = "codes",
                       template: str = DEFAULT_TEMPLATE) -> Path:
    """Instruction-tuning JSONL (question -> answer) in LLaVA's conversation format (``id``,
    ``image``, ``conversations``: human with ``<image>``, gpt with the answer), plus the question
    fields, so the same file feeds LLaVA's own training scripts."""
    lines = []
    for r in question_records(card, split, options, template):
        conv = [{"from": "human", "value": "<image>\n" + r["text"]}, {"from": "gpt", "value": r["answer"]}]
        lines.append(json.dumps({"id": r["question_id"], **r, "conversations": conv}))
    return write_text(out, "\n".join(lines) + "\n")


def _read_jsonl(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{what} file {path} not found")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {n}: not valid JSON ({exc.msg}); one JSON object per line") from None
        if not isinstance(item, dict) or "question_id" not in item:
            raise DataError(f"{path} line {n}: each line needs a question_id (LLaVA-Med format)")
        out.append(item)
    return out


def read_questions(path: str | os.PathLike) -> list[dict]:
    """The question records of a questions JSONL (each has question_id, image, text, answer)."""
    return _read_jsonl(Path(path), "questions")


def read_answers(path: str | os.PathLike) -> dict[str, dict]:
    """``question_id -> answer record`` from LLaVA-Med's answer JSONL or a CSV ``question_id,text``."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise DataError(f"answers file {path} not found")
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"question_id", "text"} <= set(reader.fieldnames):
                raise DataError(f"{path}: a CSV of answers needs the columns question_id and text")
            items = [dict(r) for r in reader]
    else:
        items = _read_jsonl(path, "answers")
    answers: dict[str, dict] = {}
    for n, item in enumerate(items, 1):
        qid = str(item["question_id"])
        if qid in answers:
            raise DataError(f"{path}: question_id {qid!r} is answered twice (answer {n}); keep one answer per question")
        answers[qid] = item
    return answers


def score_answers(card, questions: str | os.PathLike, answers: str | os.PathLike,
                  aliases: str | os.PathLike | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per-row table, predictions frame)``: every question is kept; a missing, ambiguous or
    invalid answer predicts :data:`NO_ANSWER` (always wrong). Probabilities are one-hot (hard)."""
    qpath = Path(questions)
    qs = _read_jsonl(qpath, "questions")
    given = read_answers(answers)
    known = {str(q["question_id"]) for q in qs}
    unknown = sorted(set(given) - known)
    if unknown:
        raise DataError(f"{answers}: answers to question ids that are not in {qpath}: {unknown[:5]}; score the "
                        "answers against the questions file they were generated from")
    parser = AnswerParser(card, aliases)
    by_name = {**{c: c for c in card.classes}, **{_norm(card.class_names.get(c, c)): c for c in card.classes}}
    rows = []
    for q in qs:
        qid = str(q["question_id"])
        target = by_name.get(q.get("answer")) or by_name.get(_norm(q.get("answer", "")))
        if target is None:
            raise DataError(f"{qpath}: question {qid!r} has answer {q.get('answer')!r}, not a class of {card.name}")
        record = given.get(qid)
        if record is None:
            parsed = ParsedAnswer(None, "invalid", "no answer given")
            text = None
        else:
            text = record.get("text")
            parsed = parser.parse(text)
        rows.append({"question_id": qid, "image": q.get("image", qid), "target": target, "answer": text,
                     "parsed": parsed.parsed, "status": parsed.status, "why": parsed.why,
                     "correct": parsed.parsed == target})
    table = pd.DataFrame(rows)
    classes = list(card.classes) + [NO_ANSWER]
    pred = table["parsed"].fillna(NO_ANSWER)
    frame = pd.DataFrame({"image": table["question_id"], "target": table["target"], "prediction": pred})
    records = [given.get(str(q["question_id"])) for q in qs]
    if records and all(r is not None and isinstance(r.get("probs"), dict) for r in records):
        # Option-likelihood answers (`dermkit vqa run --mode options`): real probabilities.
        for c in card.classes:
            frame[f"prob:{c}"] = [float(r["probs"].get(c, 0.0)) for r in records]
        frame["prediction"] = [card.classes[i] for i in frame[[f"prob:{c}" for c in card.classes]].to_numpy().argmax(1)]
        frame.attrs["hard"] = False
        return table, frame
    for c in classes:
        frame[f"prob:{c}"] = (pred == c).astype(float)
    frame.attrs["hard"] = True
    return table, frame
