"""`dermkit vqa run` on a tiny random LLaVA built and saved here (llava-hf layout): generation,
option probabilities (sum to 1, equal a hand computation), resume, and scoring the answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import LLAVA_WORDS as WORDS
from dermkit.cli import main


def _questions(tiny_dataset, tmp_path, n=4):
    q = tmp_path / "q.jsonl"
    assert main(["vqa", "questions", "--data", str(tiny_dataset), "--out", str(q),
                 "--template", "what is the lesion type ? choose one of : {options} ."]) == 0
    lines = q.read_text().splitlines()[:n]
    q.write_text("\n".join(lines) + "\n")
    return q


def test_generate_resume_and_score(vlm_folder, tiny_dataset, tmp_path):
    q = _questions(tiny_dataset, tmp_path)
    a = tmp_path / "a.jsonl"
    assert main(["vqa", "run", "--model", str(vlm_folder), "--questions", str(q), "--data", str(tiny_dataset),
                 "--out", str(a), "--max-new-tokens", "4"]) == 0
    answers = [json.loads(line) for line in a.read_text().splitlines()]
    assert len(answers) == 4 and all(isinstance(x["text"], str) for x in answers)
    # Greedy decoding is deterministic: the same model gives the same text (the round trip of the folder).
    from dermkit.models.generative import answer_questions, load_generative

    model, processor = load_generative(vlm_folder)
    again = tmp_path / "again.jsonl"
    answer_questions(model, processor, [json.loads(x) for x in q.read_text().splitlines()], tiny_dataset, again,
                     max_new_tokens=4, model_id="tiny-llava", progress=False)
    assert [json.loads(x)["text"] for x in again.read_text().splitlines()] == [x["text"] for x in answers]
    # Resume: nothing is answered twice.
    assert main(["vqa", "run", "--model", str(vlm_folder), "--questions", str(q), "--data", str(tiny_dataset),
                 "--out", str(a)]) == 0
    assert len(a.read_text().splitlines()) == 4
    assert main(["vqa", "score", "--questions", str(q), "--answers", str(a), "--data", str(tiny_dataset),
                 "--out", str(tmp_path / "scored"), "--n-bootstrap", "10"]) == 0


def test_option_probabilities_sum_to_one_and_match_a_hand_computation(vlm_folder, tiny_dataset, tmp_path):
    from dermkit.data.images import open_image
    from dermkit.models.generative import chat_prompt, load_generative

    q = _questions(tiny_dataset, tmp_path, n=3)
    a = tmp_path / "a.jsonl"
    assert main(["vqa", "run", "--model", str(vlm_folder), "--questions", str(q), "--data", str(tiny_dataset),
                 "--out", str(a), "--mode", "options"]) == 0
    first = json.loads(a.read_text().splitlines()[0])
    probs = first["probs"]
    assert set(probs) == {"bcc", "mel", "nv"} and sum(probs.values()) == pytest.approx(1, abs=1e-6)
    # By hand: one forward pass over prompt + option, mean log-prob of the option token, softmax.
    model, processor = load_generative(vlm_folder)
    question = json.loads(q.read_text().splitlines()[0])
    inputs = processor(images=open_image(tiny_dataset / question["image"]),
                       text=chat_prompt(processor, question["text"]), return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    logp = torch.log_softmax(logits.float(), -1)
    ids = [WORDS.index(c) for c in ("bcc", "mel", "nv")]  # one token each
    hand = torch.softmax(logp[ids], 0).numpy()
    np.testing.assert_allclose([probs[c] for c in ("bcc", "mel", "nv")], hand, atol=1e-5)
    assert main(["vqa", "score", "--questions", str(q), "--answers", str(a), "--data", str(tiny_dataset),
                 "--out", str(tmp_path / "scored"), "--n-bootstrap", "10"]) == 0
    metrics = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    assert not any("hard (one-hot)" in w for w in metrics["warnings"])


def test_original_llava_med_checkpoints_are_refused(tiny_dataset, tmp_path, capsys):
    folder = tmp_path / "llava-med"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llava_mistral"}))
    q = _questions(tiny_dataset, tmp_path)
    assert main(["vqa", "run", "--model", str(folder), "--questions", str(q), "--data", str(tiny_dataset),
                 "--out", str(tmp_path / "a.jsonl")]) == 2
    assert "convert_llava_weights_to_hf" in capsys.readouterr().err
