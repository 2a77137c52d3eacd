"""Closed-ended VQA on a dataset card: questions in LLaVA-Med's format, and honest answer parsing.

:func:`write_questions` writes one JSON line per image of a split (``question_id``, ``image``
relative to the dataset folder, ``text``, ``answer``), the options listed from the card's classes
(codes or readable names). :func:`parse_answer` maps a free-text answer to one class with the
reason: every alias of a class (its code, readable name, the card's synonyms, plurals, and the
abbreviations in ``data/vqa/aliases.yaml``, e.g. "scc in situ" -> akiec) counts; mentions under a
negation ("not melanoma", "no signs of melanoma", "free of melanoma") do not; two different classes
make the answer ``ambiguous``; nothing parseable makes it ``invalid``. :func:`score_answers` keeps
every question: a ``missing``, ambiguous or invalid answer is a wrong answer, never a dropped row.

Parsing is linear in the answer's length (a negation is looked for in the few words before a
mention, not in everything before it), and an answer longer than :data:`MAX_ANSWER_CHARS` is
refused, naming its file and line, like a file that is not UTF-8, an empty answers file or a
question id given twice.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from dermkit.data.metadata_csv import read_metadata
from dermkit.errors import DataError, excerpt
from dermkit.inputs import MAX_VALUE_CHARS, MAX_YAML_CHARS, load_yaml, read_jsonl, read_text
from dermkit.io import write_text

__all__ = ["DEFAULT_TEMPLATE", "NO_ANSWER", "MAX_ANSWER_CHARS", "AnswerParser", "option_labels", "question_records",
           "write_questions", "write_instructions", "read_questions", "read_answers", "score_answers"]

DEFAULT_TEMPLATE = "What is the lesion type? Choose one of: {options}."
NO_ANSWER = "(no valid answer)"
NEGATIONS = ("not", "no", "non", "without", "free of", "absence of", "no signs of", "no sign of", "no evidence of",
             "rule out", "ruled out", "unlikely", "excluded", "negative for", "isn't", "is not", "rather than")
NEGATION_REACH = 3  # words between a negation and the mention it negates ("not a typical melanoma")
# The words a negation can take before a mention: the longest negation phrase plus its reach.
_NEGATION_WORDS = max(len(n.split()) for n in NEGATIONS) + NEGATION_REACH
_NEGATION_FIRST = {n.split()[0] for n in NEGATIONS}  # a slice without one of these words negates nothing
MAX_ANSWER_CHARS = MAX_VALUE_CHARS  # a model's answer is a sentence or a paragraph


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
    status: str  # ok | ambiguous | invalid | missing
    why: str


class AnswerParser:
    """Free text -> one of ``classes`` (see the module docstring), with the reason."""

    def __init__(self, card, aliases_file: str | os.PathLike | None = None):
        self.classes = list(card.classes)
        extra = _packaged_aliases()
        if aliases_file is not None:
            extra = {**extra, **_aliases(read_text(aliases_file, "--aliases file", DataError, MAX_YAML_CHARS),
                                         str(aliases_file))}
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
                                    + rf")\b(?: \w+){{0,{NEGATION_REACH}}} $")

    def parse(self, text) -> ParsedAnswer:
        if text is None or (isinstance(text, float) and np.isnan(text)) or not str(text).strip():
            return ParsedAnswer(None, "invalid", "empty answer")
        found, negated = [], []
        # A negation reaches to the end of its clause only ("free of melanoma; consistent with ...").
        for clause in re.split(r"[.;:!?,()]|\bbut\b|\bhowever\b|\bwhereas\b", str(text).lower()):
            norm = _norm(clause)
            may_negate = not _NEGATION_FIRST.isdisjoint(norm.split())
            for m in self._pattern.finditer(norm):
                cls = self.aliases[m.group(1)]
                negation = may_negate and self._negation.search(_last_words(norm, m.start()))
                (negated if negation else found).append((m.group(1), cls))
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


def _last_words(norm: str, end: int) -> str:
    """The last words of ``norm[:end]`` a negation can reach from (see NEGATION_REACH): a bounded
    slice, so a long answer with many mentions is parsed in linear time (searching all of
    ``norm[:end]`` for every mention was quadratic)."""
    start = end - 1  # norm[end - 1] is the space before the mention
    for _ in range(_NEGATION_WORDS + 1):
        start = norm.rfind(" ", 0, start)
        if start < 0:
            return norm[:end]
    return norm[start + 1:end]


def _packaged_aliases() -> dict[str, list[str]]:
    text = resources.files("dermkit.data").joinpath("vqa/aliases.yaml").read_text(encoding="utf-8")
    return _aliases(text, "packaged vqa/aliases.yaml")


def _aliases(text: str, where: str) -> dict[str, list[str]]:
    spec = load_yaml(text, where, DataError) or {}
    if not isinstance(spec, dict) or not all(isinstance(v, (list, str)) for v in spec.values()):
        raise DataError(f"{where}: expected {{class: [aliases...]}}")
    return {str(k): [str(v) for v in ([vs] if isinstance(vs, str) else vs)] for k, vs in spec.items()}


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


def _records(path: Path, what: str) -> list[tuple[int, dict]]:
    """``[(line, record)]`` of a JSONL file whose lines are objects with a ``question_id``."""
    if not path.exists():
        raise DataError(f"{what} file {path} not found")
    out = []
    for n, item in read_jsonl(path, f"{what} file"):
        if not isinstance(item, dict) or "question_id" not in item:
            raise DataError(f"{path} line {n}: each line needs a question_id (LLaVA-Med format)")
        out.append((n, item))
    return out


def _once(records: list[tuple[int, dict]], path: Path, what: str, fix: str) -> dict[str, tuple[int, dict]]:
    """``question_id -> (line, record)``; DataError naming both lines of an id given twice."""
    by_id: dict[str, tuple[int, dict]] = {}
    for n, item in records:
        qid = str(item["question_id"])
        if qid in by_id:
            raise DataError(f"{path} lines {by_id[qid][0]} and {n}: question_id {excerpt(qid)} {what} twice; {fix}")
        by_id[qid] = (n, item)
    return by_id


def read_questions(path: str | os.PathLike) -> list[dict]:
    """The question records of a questions JSONL (each has question_id, image, text, answer);
    DataError for a question id listed twice (naming both lines)."""
    path = Path(path)
    records = _records(path, "questions")
    _once(records, path, "is asked", "give each question one line and its own id")
    return [item for _, item in records]


def read_answers(path: str | os.PathLike) -> dict[str, dict]:
    """``question_id -> answer record`` from LLaVA-Med's answer JSONL or a CSV ``question_id,text``.

    DataError (file, line) for a file without answers, a question answered twice, an answer
    longer than :data:`MAX_ANSWER_CHARS`, text that is not UTF-8 or a line that is not JSON."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        if not path.exists():
            raise DataError(f"answers file {path} not found")
        if path.is_dir():
            raise DataError(f"answers file {path} is a folder; give the file itself")
        frame = read_metadata(path) if path.stat().st_size else pd.DataFrame()
        if len(frame.columns) and not {"question_id", "text"} <= set(frame.columns):
            raise DataError(f"{path} line 1 (header): a CSV of answers needs the columns question_id and text")
        records = [(int(i) + 2, {k: (None if pd.isna(v) else v) for k, v in row.items()})
                   for i, row in zip(frame.index, frame.to_dict("records"))]
    else:
        records = _records(path, "answers")
    if not records:
        raise DataError(f"answers file {path} holds no answers; score the file the model wrote (`dermkit vqa run "
                        "--out`), one answer per line")
    for n, item in records:
        if excerpt(item.get("question_id")) == "empty":
            raise DataError(f"{path} line {n}: the question_id is empty; each answer names the question it answers")
        text = item.get("text")
        text = text if isinstance(text, str) or text is None else str(text)  # a number or list is parsed as text
        if text is not None and len(text) > MAX_ANSWER_CHARS:
            raise DataError(f"{path} line {n}: the answer to question {excerpt(str(item['question_id']), 40)} is "
                            f"{len(text):,} characters ({excerpt(text, 40)}); an answer is limited to "
                            f"{MAX_ANSWER_CHARS:,}. Is it the model's answer? Cap its length (vqa run "
                            "--max-new-tokens)")
    once = _once(records, path, "is answered", "keep one answer per question")
    return {qid: item for qid, (_, item) in once.items()}


def score_answers(card, questions: str | os.PathLike, answers: str | os.PathLike,
                  aliases: str | os.PathLike | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per-row table, predictions frame)``: every question is kept; a missing (status
    ``missing``), ambiguous or invalid answer predicts :data:`NO_ANSWER` (always wrong).
    Probabilities are one-hot (hard)."""
    qpath = Path(questions)
    qs = read_questions(qpath)
    given = read_answers(answers)
    known = {str(q["question_id"]) for q in qs}
    unknown = sorted(set(given) - known)
    if unknown:
        raise DataError(f"{answers}: answers to question ids that are not in {qpath}: "
                        f"{', '.join(excerpt(u, 40) for u in unknown[:5])}; score the answers against the questions "
                        "file they were generated from")
    parser = AnswerParser(card, aliases)
    by_name = {**{c: c for c in card.classes}, **{_norm(card.class_names.get(c, c)): c for c in card.classes}}
    rows = []
    for q in qs:
        qid = str(q["question_id"])
        target = by_name.get(q.get("answer")) or by_name.get(_norm(q.get("answer", "")))
        if target is None:
            raise DataError(f"{qpath}: question {excerpt(qid, 40)} has answer {excerpt(q.get('answer'))}, not a class "
                            f"of {card.name}")
        record = given.get(qid)
        if record is None:  # missing: counted apart from invalid answers (README, "VQA")
            parsed = ParsedAnswer(None, "missing", "no answer given")
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
