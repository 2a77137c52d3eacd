"""VQA answer scoring: every normalisation rule, negation, ambiguous and invalid answers kept,
known answers on a hand-written file of real-world phrasings (HAM10000's classes)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import requires_shared_data
from dermkit.cli import main
from dermkit.data import load_card
from dermkit.data.vqa import AnswerParser, read_answers, write_questions
from dermkit.errors import DataError

# (answer text, expected class or None, expected status) -- phrasings generative VLMs produce.
ANSWERS = [
    ("mel", "mel", "ok"),                                     # class code
    ("Melanoma.", "mel", "ok"),                               # readable name, case, punctuation
    ("The answer is: malignant melanoma", "mel", "ok"),       # card synonym
    ("melanomas", "mel", "ok"),                               # plural
    ("nevi", "nv", "ok"),                                     # irregular plural
    ("A benign melanocytic naevus", "nv", "ok"),              # British spelling synonym
    ("moles", "nv", "ok"),                                    # plural of a synonym
    ("BCC", "bcc", "ok"),                                     # abbreviation
    ("Likely a basal cell carcinoma (BCC).", "bcc", "ok"),    # name + abbreviation of one class
    ("basalioma", "bcc", "ok"),
    ("scc in situ", "akiec", "ok"),                           # abbreviation -> akiec
    ("Bowen's disease", "akiec", "ok"),
    ("bowens disease", "akiec", "ok"),
    ("actinic keratoses", "akiec", "ok"),
    ("AK", "akiec", "ok"),
    ("seborrheic keratosis", "bkl", "ok"),
    ("Seborrhoeic keratoses are the most likely", "bkl", "ok"),
    ("solar lentigo", "bkl", "ok"),
    ("benign keratosis-like lesion", "bkl", "ok"),
    ("dermatofibroma", "df", "ok"),
    ("DF", "df", "ok"),
    ("cherry angioma", "vasc", "ok"),
    ("vascular lesion", "vasc", "ok"),
    ("This is not melanoma; it is a benign nevus.", "nv", "ok"),            # negated mention ignored
    ("No signs of melanoma, consistent with seborrheic keratosis", "bkl", "ok"),
    ("free of melanoma; dermatofibroma", "df", "ok"),
    ("It is not a melanoma but a nevus", "nv", "ok"),
    ("no signs of melanoma", None, "invalid"),                # only negated
    ("non-melanoma lesion", None, "invalid"),
    ("It could be melanoma or a nevus.", None, "ambiguous"),  # two classes
    ("bcc vs seborrheic keratosis", None, "ambiguous"),
    ("I cannot determine the lesion type from this image.", None, "invalid"),
    ("", None, "invalid"),
    ("Skin lesion.", None, "invalid"),
]


@pytest.fixture(scope="module")
def parser():
    from dermkit.data.card import DatasetCard
    from dermkit.data.card_schema import packaged_spec

    return AnswerParser(DatasetCard(".", packaged_spec("ham10000")))


@pytest.mark.parametrize("text, expected, status", ANSWERS, ids=[a[0] or "<empty>" for a in ANSWERS])
def test_known_parses(parser, text, expected, status):
    parsed = parser.parse(text)
    assert (parsed.parsed, parsed.status) == (expected, status), parsed.why
    assert parsed.why


def test_scoring_keeps_every_question_and_reports_coverage(tiny_dataset, tmp_path, capsys):
    q = tmp_path / "q.jsonl"
    assert main(["vqa", "questions", "--data", str(tiny_dataset), "--out", str(q)]) == 0
    questions = [json.loads(line) for line in q.read_text().splitlines()]
    assert len(questions) == 18 and "Choose one of: bcc, mel, nv." in questions[0]["text"]
    assert (tiny_dataset / questions[0]["image"]).is_file() and questions[0]["answer"] in ("bcc", "mel", "nv")
    # Answers: correct, a synonym, a negated + right class, ambiguous, invalid; 3 questions left unanswered.
    texts = ["{a}", "it is a {a} lesion", "not bcc, rather {a}", "bcc or mel", "no idea"]
    rows = [{"question_id": item["question_id"], "text": texts[i % 5].format(a=item["answer"])}
            for i, item in enumerate(questions[:15])]
    answers = tmp_path / "a.csv"
    pd.DataFrame(rows).to_csv(answers, index=False)
    out = tmp_path / "scored"
    assert main(["vqa", "score", "--questions", str(q), "--answers", str(answers), "--data", str(tiny_dataset),
                 "--out", str(out), "--n-bootstrap", "20"]) == 0
    table = pd.read_csv(out / "answers_table.csv", keep_default_na=False)
    assert len(table) == 18  # nothing dropped
    assert (table["status"] == "invalid").sum() == 3 and (table["status"] == "ambiguous").sum() == 3
    assert (table["status"] == "missing").sum() == 3  # unanswered: missing, not invalid (README)
    assert set(table.loc[table["answer"] == "", "why"]) == {"no answer given"}
    summary = json.loads((out / "vqa.json").read_text())
    assert summary["coverage"] == pytest.approx(9 / 18)
    ok = table[table["status"] == "ok"]
    expected_correct = (ok["parsed"] == ok["target"]).sum()
    assert summary["accuracy"] == pytest.approx(expected_correct / 18)  # unparsed rows count as wrong
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 18 and any("hard (one-hot)" in w for w in metrics["warnings"])
    assert "AUC from hard predictions" in (out / "report.md").read_text()


def test_llava_med_answer_jsonl_and_errors(tiny_dataset, tmp_path):
    card = load_card(tiny_dataset)
    q = write_questions(card, "test", tmp_path / "q.jsonl", options="names")
    first = json.loads(q.read_text().splitlines()[0])
    assert first["answer"].endswith("lesion")  # readable names from the card
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"question_id": first["question_id"], "text": "mel", "answer_id": "x", "model_id": "m"})
                 + "\n")
    assert read_answers(a)[first["question_id"]]["text"] == "mel"
    a.write_text(a.read_text() * 2)
    with pytest.raises(DataError, match="answered twice"):
        read_answers(a)
    a.write_text("{not json}\n")
    with pytest.raises(DataError, match="line 1"):
        read_answers(a)
    with pytest.raises(DataError, match="must contain {options}"):
        write_questions(card, "test", tmp_path / "x.jsonl", template="What is it?")


@requires_shared_data
def test_ham10000_questions_carry_codes():
    card = load_card("ham10000")
    assert {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"} == set(card.classes)
