"""Retrieval metrics on hand-made similarity matrices, metadata captions, and the retrieve/rank commands."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from dermkit.cli import main
from dermkit.data import load_card
from dermkit.data.captions import caption_for_row, captions_for_split
from dermkit.errors import DataError
from dermkit.evaluate.retrieval import query_ranks, retrieval_markdown, retrieval_metrics
from dermkit.values import is_unknown

torch.set_num_threads(1)


# ------------------------------------------------------------------ metrics: known answers
def test_identity_is_perfect():
    m = retrieval_metrics(np.eye(4))
    for direction in ("image_to_text", "text_to_image"):
        assert m[direction] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0, "mean_rank": 1.0}
    assert m["mean_recall"] == 1.0 and m["n_images"] == 4 and m["ground_truth"] == "one-to-one"


def test_small_matrix_by_hand():
    sim = np.array([[0.9, 0.1, 0.5],
                    [0.8, 0.2, 0.1],
                    [0.1, 0.3, 0.7]])
    m = retrieval_metrics(sim)
    # image 1's caption (0.2) is beaten by text 0 (0.8): rank 2; text 1's image (0.2) by image 2 (0.3).
    assert m["image_to_text"]["R@1"] == pytest.approx(2 / 3)
    assert m["image_to_text"]["mean_rank"] == pytest.approx(4 / 3)
    assert m["image_to_text"]["median_rank"] == 1.0
    assert m["text_to_image"]["R@1"] == pytest.approx(2 / 3)
    assert m["text_to_image"]["R@5"] == 1.0
    assert m["mean_recall"] == pytest.approx((2 / 3 + 1 + 1) * 2 / 6)


def test_ranks_one_to_twelve():
    # Row i has exactly i wrong texts scoring above its correct text: rank i + 1.
    n = 12
    sim = np.zeros((n, n))
    for i in range(n):
        sim[i, i] = 0.5
        wrong = [j for j in range(n) if j != i][:i]
        sim[i, wrong] = 1.0
    ranks = query_ranks(sim, None)
    assert ranks.tolist() == list(range(1, n + 1))
    m = retrieval_metrics(sim)["image_to_text"]
    assert m["R@1"] == pytest.approx(1 / 12)
    assert m["R@5"] == pytest.approx(5 / 12)
    assert m["R@10"] == pytest.approx(10 / 12)
    assert m["median_rank"] == 6.5 and m["mean_rank"] == 6.5


def test_ties_count_against_the_query():
    m = retrieval_metrics(np.ones((4, 4)))
    assert m["image_to_text"]["R@1"] == 0.0
    assert m["image_to_text"]["median_rank"] == 4.0
    assert m["text_to_image"]["mean_rank"] == 4.0


def test_several_correct_texts_per_image():
    sim = np.array([[0.1, 0.9, 0.5, 0.2],
                    [0.3, 0.2, 0.4, 0.8]])
    gt = [{0, 1}, [2, 3]]
    m = retrieval_metrics(sim, gt)
    assert m["image_to_text"]["R@1"] == 1.0  # best correct text ranks first for both images
    # text 0 (image 0 scores 0.1 < image 1's 0.3) and text 2 (0.4 < 0.5) rank their image second
    assert m["text_to_image"]["R@1"] == 0.5
    assert m["text_to_image"]["mean_rank"] == 1.5
    assert m["ground_truth"] == "sets"
    mask = np.array([[True, True, False, False], [False, False, True, True]])
    assert retrieval_metrics(sim, mask) == m


def test_metric_input_errors():
    with pytest.raises(DataError, match="square"):
        retrieval_metrics(np.zeros((2, 3)))
    with pytest.raises(DataError, match="text 2"):
        retrieval_metrics(np.zeros((2, 3)), [[0], [1]])
    with pytest.raises(DataError, match="outside"):
        retrieval_metrics(np.zeros((2, 2)), [[0], [5]])
    with pytest.raises(DataError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 0], [0, 1]]))


def test_markdown_table():
    text = retrieval_markdown(retrieval_metrics(np.eye(3)), title="T")
    assert "| image → text | 100.00 | 100.00 | 100.00 | 1 | 1.0 |" in text


# ------------------------------------------------------------------ captions
def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_captions_use_metadata_and_are_deterministic(tiny_card):
    rows = tiny_card.rows("train")
    a = captions_for_split(tiny_card, "train", seed=0)
    assert a == captions_for_split(tiny_card, "train", seed=0)
    assert a != captions_for_split(tiny_card, "train", seed=1)
    assert len(a) == len(rows)
    for caption, (_, row) in zip(a, rows.iterrows()):
        cls = row["diagnosis"]
        assert f"{cls} lesion" in caption.lower() and cls.upper() in caption  # readable name + synonym
        assert f"{int(row['age'])}-year-old" in caption
        assert {"woman", "female"} & _words(caption) if row["sex"] == "female" else {"man", "male"} & _words(caption)
        assert _words(caption) & {"dermoscopic", "dermoscopy", "dermatoscopic"}
        assert not _words(caption) & {"nan", "unknown", "unk", "none"}
    assert len(set(a)) > len(a) // 2  # templates and word choices vary


def test_caption_column_is_used(tiny_dataset):
    meta = tiny_dataset / "metadata.csv"
    df = pd.read_csv(meta)
    df["caption"] = [f"given caption {i}" for i in range(len(df))]
    df.loc[0, "caption"] = None  # a missing caption falls back to a generated one
    df.to_csv(meta, index=False)
    card = load_card(tiny_dataset)
    rows = card.rows("train")
    captions = captions_for_split(card, "train", 0)
    for caption, (index, row) in zip(captions, rows.iterrows()):
        if index == 0:
            assert "given caption" not in caption and "lesion" in caption
        else:
            assert caption == row["caption"]


def test_missing_values_are_never_rendered(tiny_card):
    rng = np.random.default_rng(0)
    row = pd.Series({"image": "x.jpg", "diagnosis": "mel", "age": "nan", "sex": "unknown",
                     "localization": "UNK", "itch": "UNK", "bleed": None, "fitspatrick": float("nan"),
                     "pigment_network": "unknown", "diameter_1": ""})
    for _ in range(20):
        caption = caption_for_row(row, tiny_card, rng)
        assert not _words(caption) & {"nan", "unknown", "unk", "none", "year", "fitzpatrick", "itches", "mm"}
        assert "mel lesion" in caption.lower() and "MEL" in caption
    assert is_unknown("UNK") and is_unknown(float("nan")) and is_unknown(" Unknown ") and not is_unknown("0")


def test_derm7pt_ph2_and_pad_fields(tiny_card):
    rng = np.random.default_rng(3)
    derm7pt = pd.Series({"diagnosis": "mel", "pigment_network": "atypical", "streaks": "irregular",
                         "pigmentation": "diffuse irregular", "regression_structures": "blue areas",
                         "dots_and_globules": "absent", "blue_whitish_veil": "present",
                         "vascular_structures": "dotted", "location": "head neck", "sex": "female",
                         "elevation": "palpable"})
    text = caption_for_row(derm7pt, tiny_card, rng)
    for phrase in ("atypical pigment network", "irregular streaks", "diffuse irregular pigmentation",
                   "regression structures (blue areas)", "blue-whitish veil", "dotted vascular structures",
                   "head or neck", "palpable"):
        assert phrase in text
    assert "absent dots" not in text  # absent criteria are omitted or phrased as "no ..."

    ph2 = pd.Series({"diagnosis": "mel", "asymmetry": "2", "pigment_network": "AT", "dots_globules": "T",
                     "streaks": "P", "regression_areas": "A", "blue_whitish_veil": "A",
                     "color_black": "1", "color_dark_brown": "1", "color_white": "0"})
    text = caption_for_row(ph2, tiny_card, rng)
    for phrase in ("asymmetry along both axes", "atypical pigment network", "typical dots and globules",
                   "streaks", "dark brown and black colours"):
        assert phrase in text
    assert "white" not in text and " AT " not in text

    pad = pd.Series({"diagnosis": "mel", "itch": "True", "grew": "UNK", "bleed": "True", "elevation": "False",
                     "fitspatrick": "2.0", "region": "FACE", "gender": "FEMALE", "age": "55",
                     "diameter_1": "10.0", "diameter_2": "5.0"})
    text = caption_for_row(pad, tiny_card, rng)
    for phrase in ("itches", "bleeds", "flat", "Fitzpatrick type II", "on the face", "55-year-old",
                   "10 x 5 mm"):
        assert phrase in text
    assert "grown" not in text


# ------------------------------------------------------------------ encoders + commands
CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny random open_clip CLIP (32 px, 16-d embeddings) saved in the hub layout."""
    import open_clip

    from dermkit.models.encoders import save_open_clip_folder

    torch.manual_seed(0)
    model = open_clip.CLIP(**CLIP_CFG)
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    save_open_clip_folder(model, folder, CLIP_CFG)
    return folder


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_retrieval_and_cli(tiny_dataset, clip_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ret"
    code, stdout, err = run(["retrieve", "--model", clip_folder, "--data", tiny_dataset, "--out", out], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == metrics["n_texts"] == 18
    for key in ("R@1", "R@5", "R@10", "median_rank", "mean_rank"):
        assert key in metrics["image_to_text"] and key in metrics["text_to_image"]
    assert 0 <= metrics["mean_recall"] <= 1
    captions = pd.read_csv(out / "captions.csv")
    assert len(captions) == 18 and captions["image_to_text_rank"].between(1, 18).all()
    assert "R@1" in (out / "retrieval.md").read_text()
    assert "mean recall" in stdout


def test_rank_texts_and_cli(tiny_dataset, clip_folder, capsys):
    from dermkit.engine.retrieval import rank_texts
    from dermkit.models.encoders import load_encoder

    image = next((tiny_dataset / "images").glob("*.jpg"))
    texts = ["a melanoma", "a nevus", "a basal cell carcinoma"]
    ranked = rank_texts(load_encoder(clip_folder), image, texts)
    assert sorted(t for t, _ in ranked) == sorted(texts)
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)

    code, out, err = run(["rank", "--model", clip_folder, image, "--texts", texts[0], texts[1],
                          "--texts", texts[2], "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert [r["text"] for r in result] == [t for t, _ in ranked]
    assert sum(r["probability"] for r in result) == pytest.approx(1, abs=1e-5)


def test_rank_and_retrieve_need_text_encoder(tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    image = next((tiny_dataset / "images").glob("*.jpg"))
    code, _, err = run(["rank", "--model", "timm:resnet18@random", image, "--texts", "a melanoma"], capsys)
    assert code == 2 and "text encoder" in err
    code, _, err = run(["rank", "--model", "timm:resnet18@random", image], capsys)
    assert code == 2 and "no candidate texts" in err
