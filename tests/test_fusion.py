"""Multi-modal fusion: typed metadata, paired views, modality dropout, thickness head, predictor.

Tiny models only: the tiny random CLIP of conftest.py (32 px, 16-d) is both the image encoder
and the metadata text encoder; the tiny colour dataset gets a clinical view, metadata with
missing values and a thickness target. Real-row tests read Derm7pt / PAD-UFES-20 rows (and copy a
few dozen real cases into tmp_path for one end-to-end run); they skip without the shared data.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import SHARED_DATA, make_dataset, requires_shared_data
from dermkit.data import load_card
from dermkit.data.captions import metadata_prompt
from dermkit.data.multimodal import (
    MetadataEncoder,
    build_rows,
    fusion_meta_columns,
    thickness_target,
    view_paths,
)
from dermkit.errors import ConfigError, DataError, ModelError


def run_config(raw: dict, out, resume: bool = False, progress: bool = False) -> dict:
    from dermkit.experiment import run_experiment

    return run_experiment({"method": "fusion", **raw}, out, resume=resume, progress=progress)


torch.set_num_threads(1)


def _paired(tmp_path, thickness: str = "ordinal"):
    """The tiny dataset with a clinical view, typed metadata (with gaps) and a thickness target."""
    root = make_dataset(tmp_path, name="paired")
    df = pd.read_csv(root / "metadata.csv", dtype=str)
    # Clinical view: another image of the same class and split (so it carries the class colour).
    clin = []
    for (_, _), group in df.groupby(["diagnosis", "split"], sort=False):
        images = group["image"].tolist()
        clin += list(zip(group.index, images[1:] + images[:1]))
    df["clinic_image"] = pd.Series(dict(clin))
    df.loc[df.index[::7], "clinic_image"] = np.nan  # some cases have no clinical picture
    rng = np.random.default_rng(0)
    df["itch"] = np.where(df["diagnosis"] == "mel", "True", "False")
    df.loc[df.index[::5], "itch"] = "UNK"
    df.loc[df.index[::6], "age"] = np.nan
    df["site"] = rng.choice(["back", "arm", "face"], len(df))
    mel = df["diagnosis"] == "mel"
    if thickness == "ordinal":
        df["breslow_ordinal"] = np.where(mel, rng.integers(0, 4, len(df)).astype(str), None)
    else:
        df["thickness"] = np.where(mel, np.round(rng.uniform(0.2, 3.0, len(df)), 2).astype(str), None)
    df.to_csv(root / "metadata.csv", index=False)
    spec = yaml.safe_load((root / "dataset.yaml").read_text())
    spec.update(second_view_column="clinic_image", missing_values=["UNK"], modality="mixed",
                metadata_columns={"age": "numeric", "sex": "categorical", "itch": "boolean", "site": "categorical",
                                  ("breslow_ordinal" if thickness == "ordinal" else "thickness"): "numeric"})
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return root


def _config(root, clip_folder, tmp_path, **kw):
    cfg = {"data": str(root), "image_encoder": str(clip_folder), "text_encoder": str(clip_folder),
           "cache_dir": str(tmp_path / "cache"), "epochs": 3, "hidden": 32, "num_heads": 2, "meta_num_heads": 2,
           "batch_size": 16, "n_bootstrap": 20, "patience": None, "lr": 3e-3}
    cfg.update(kw)
    return cfg


# ------------------------------------------------------------------------------ data layer


def test_metadata_encoder_types_missing_and_roundtrip(tmp_path):
    card = load_card(_paired(tmp_path))
    columns = fusion_meta_columns(card)
    assert "breslow_ordinal" not in columns and set(columns) == {"age", "sex", "itch", "site"}
    train = card.rows("train")
    enc = MetadataEncoder.fit(train, columns, card.missing_values)
    x = enc.transform(train)
    assert x.shape == (len(train), enc.dim) and len(enc.feature_names) == enc.dim
    names = enc.feature_names
    age, age_missing = x[:, names.index("age")], x[:, names.index("age:missing")]
    missing_age = train["age"].isna().to_numpy()
    assert age_missing[missing_age].all() and not age_missing[~missing_age].any()
    assert abs(age[~missing_age].mean()) < 1e-5  # standardised with the train stats
    itch_missing = x[:, names.index("itch:missing")]
    assert (itch_missing == (train["itch"] == "UNK").to_numpy()).all()  # the card's UNK counts as missing
    # Categorical: one-hot incl. an explicit missing level and an <other> level for unseen values.
    test = card.rows("test").copy()
    test.loc[test.index[0], "site"] = "scalp"
    test.loc[test.index[1], "site"] = np.nan
    xt = enc.transform(test)
    assert xt[0, names.index("site=<other>")] == 1 and xt[1, names.index("site=<missing>")] == 1
    again = MetadataEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert np.array_equal(again.transform(test), xt)


def test_metadata_bad_value_names_line_and_column(tmp_path):
    card = load_card(_paired(tmp_path))
    rows = card.rows("train").copy()
    rows.loc[rows.index[2], "age"] = "old"
    with pytest.raises(DataError, match=r"line \d+: column 'age' is declared numeric but holds 'old'"):
        MetadataEncoder.fit(rows, {"age": "numeric"})


def test_leaky_meta_columns_are_refused(tmp_path):
    card = load_card(_paired(tmp_path))
    with pytest.raises(ConfigError, match="leak"):
        fusion_meta_columns(card, include=["age", "breslow_ordinal"])
    with pytest.raises(ConfigError, match="not typed metadata"):
        fusion_meta_columns(card, include=["agee"])


def test_metadata_prompt_is_deterministic_and_label_free(tmp_path):
    card = load_card(_paired(tmp_path))
    row = card.rows("train").iloc[0]
    cols = fusion_meta_columns(card)
    text = metadata_prompt(row, card, cols)
    assert text == metadata_prompt(row, card, cols)
    assert row["diagnosis"] not in text and "breslow" not in text
    assert f"lesion on the {row['site']}" in text


def test_views_and_thickness_targets(tmp_path):
    card = load_card(_paired(tmp_path))
    rows = card.rows("train")
    clin = view_paths(card, rows, "clin")
    assert sum(p is None for p in clin) == rows["clinic_image"].isna().sum() > 0
    kind, values = thickness_target(card, rows)
    assert kind == "ordinal" and np.isfinite(values[(rows["diagnosis"] == "mel").to_numpy()]).all()
    assert np.isnan(values[(rows["diagnosis"] != "mel").to_numpy()]).all()
    bad = rows.copy()
    bad.loc[bad.index[(bad["diagnosis"] == "mel").to_numpy()][0], "breslow_ordinal"] = "7"
    with pytest.raises(DataError, match="breslow_ordinal"):
        thickness_target(card, bad)
    plain = load_card(make_dataset(tmp_path, name="plain"))
    with pytest.raises(ConfigError, match="no clinical image"):
        view_paths(plain, plain.rows("train"), "clin")


def test_modality_dropout_keeps_one_modality():
    from dermkit.methods.fusion import modality_dropout

    torch.manual_seed(0)
    present = {"derm": torch.ones(500, dtype=torch.bool), "clin": torch.rand(500) > 0.3,
               "meta": torch.ones(500, dtype=torch.bool)}
    kept = modality_dropout(present, 0.6)
    stack = torch.stack(list(kept.values()), 1)
    assert stack.any(1).all()
    assert not (kept["clin"] & ~present["clin"]).any()  # never revives a missing view
    assert 0.3 < stack.float().mean() < 0.7


def test_fusion_net_masks_missing_modalities():
    from dermkit.models.fusion import FusionNet, coral_loss, coral_predict

    torch.manual_seed(0)
    for fusion in ("concat", "cross_attention"):
        net = FusionNet(3, {"derm": 8, "clin": 8}, meta_widths=[2, 3], hidden=16, fusion=fusion, num_heads=2,
                        meta_num_heads=2, depth=2, meta_depth=2, thickness_kind="ordinal").eval()
        images = {"derm": torch.randn(4, 8), "clin": torch.randn(4, 8)}
        meta = torch.randn(4, 5)
        present = {"derm": torch.tensor([1, 1, 0, 1]).bool(), "clin": torch.tensor([1, 0, 1, 0]).bool(),
                   "meta": torch.tensor([1, 1, 1, 0]).bool()}
        out = net(images, present, meta)
        assert out["logits"].shape == (4, 3) and out["thickness"].shape == (4, 3)
        assert torch.isfinite(out["logits"]).all()
        # A masked modality has no influence on the output.
        changed = {"derm": images["derm"], "clin": images["clin"] + torch.randn(4, 8) * 10}
        out2 = net(changed, present, meta)
        assert torch.allclose(out["logits"][1], out2["logits"][1], atol=1e-5)
        assert torch.allclose(out["logits"][3], out2["logits"][3], atol=1e-5)
        assert not torch.allclose(out["logits"][0], out2["logits"][0], atol=1e-4)
    logits = torch.tensor([[5.0, 5.0, -5.0], [-5.0, -5.0, -5.0]])
    pred, expected = coral_predict(logits)
    assert pred.tolist() == [2, 0] and abs(float(expected[0]) - 2.0) < 0.02
    assert coral_loss(logits, torch.tensor([2, 0])) < 0.1 < coral_loss(logits, torch.tensor([0, 3]))


# ------------------------------------------------------------------------------ end to end


def test_fusion_run_predictor_and_cli(tmp_path, clip_folder, capsys):
    from dermkit.cli import main
    from dermkit.experiment import run_experiment
    from dermkit.methods import load_predictor

    root = _paired(tmp_path)
    raw = {"method": "fusion", **_config(root, clip_folder, tmp_path, use_clinical=True, use_meta=True,
                                         fusion="cross_attention", modality_dropout=0.3)}
    summary = run_experiment(raw, tmp_path / "run", progress=False)
    assert summary["dataset"] == "paired" and summary["task"] == "all"
    assert set(summary["test"]) == {"accuracy", "balanced_accuracy", "macro_f1", "macro_auc"}
    assert summary["test_ci"]["accuracy"]["low"] is not None
    assert summary["table_extra"]["modalities"] == "derm+clin+meta"
    assert summary["thickness"]["kind"] == "ordinal" and "QWK" in summary["table_extra"]["thickness (test)"]
    assert (tmp_path / "run" / "eval" / "test" / "thickness_agreement.png").is_file()
    assert len(summary["test_by_modalities"]) == 7
    card = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert card["method"] == "fusion" and card["modalities"] == ["derm", "clin", "meta"]

    predictor = load_predictor(tmp_path / "run" / "model", device="cpu")
    preds = predictor.predict_split(load_card(root), "test", progress=False)
    assert len(preds) == 18 and {"prob:bcc", "prob:mel", "prob:nv", "group"} <= set(preds.columns)
    image = root / "images" / "mel_test_00.jpg"
    proba = predictor.predict_paths([image])
    assert proba.shape == (1, 3) and abs(proba.sum() - 1) < 1e-6
    details = predictor.predict_details([image])[0]
    assert details["modalities used"] == "derm" and details["modalities missing"] == "clin+meta"
    assert "bin" in details["thickness"]
    predictor.set_extra_inputs(clinical=[root / "images" / "mel_test_01.jpg"], meta={"age": "61", "itch": "yes"})
    assert predictor.predict_details([image])[0]["modalities used"] == "derm+clin+meta"
    with pytest.raises(ConfigError, match="unknown metadata field"):
        predictor.set_extra_inputs(meta={"colour": "red"})
    predictor.set_extra_inputs(meta={"age": "old"})
    with pytest.raises(DataError, match="--meta for image 1: column 'age'"):
        predictor.predict_paths([image])

    model = tmp_path / "run" / "model"
    capsys.readouterr()
    assert main(["predict", str(image), "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert "thickness" in out and "modalities used: derm" in out and "confidence" in out
    assert main(["predict", str(image), "--model", str(model), "--json", "--clinical",
                 str(root / "images" / "mel_test_01.jpg"), "--meta", "age=61"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["modalities used"] == "derm+clin+meta"
    assert main(["predict", str(image), "--model", str(model), "--meta", "age"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_fusion_concat_text_meta_regression_thickness(tmp_path, clip_folder):
    from dermkit.methods import load_predictor
    from dermkit.methods.fusion import FusionPredictor

    root = _paired(tmp_path, thickness="regression")
    summary = run_config(_config(root, clip_folder, tmp_path, use_meta=True, meta_encoder="text", epochs=2,
                                 task="melanoma_vs_rest"), tmp_path / "run", progress=False)
    assert summary["task"] == "melanoma_vs_rest"
    assert summary["thickness"]["kind"] == "regression" and {"mae", "rmse", "mape"} <= set(summary["thickness"])
    predictor = load_predictor(tmp_path / "run" / "model", device="cpu")
    assert isinstance(predictor, FusionPredictor) and predictor.classes == ["other", "mel"]
    preds = predictor.predict_split(root, "test", progress=False)  # 3-class card -> the model's binary task
    assert set(preds["target"]) == {"other", "mel"}
    assert predictor.predict_details([root / "images" / "nv_test_00.jpg"])[0]["thickness"].endswith(" mm")


def test_config_errors(tmp_path, clip_folder):
    from dermkit.methods.fusion import FusionConfig

    plain = make_dataset(tmp_path, name="plain")
    with pytest.raises(ConfigError, match="use_clinical: true but dataset plain has no clinical"):
        run_config(_config(plain, clip_folder, tmp_path, use_clinical=True), tmp_path / "r1", progress=False)
    with pytest.raises(ConfigError, match="no modality"):
        FusionConfig(use_derm=False).validate()
    with pytest.raises(ConfigError, match="must divide"):
        FusionConfig(hidden=30, num_heads=4).validate()
    with pytest.raises(ConfigError, match="unknown key"):
        FusionConfig.from_dict({"use_clinic": True})


def test_dino_backbone_without_local_weights_says_where(tmp_path, monkeypatch):
    from dermkit.methods.fusion import load_image_encoder

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    with pytest.raises(ModelError, match=r"vit_small_patch16_224\.dino.*model\.safetensors.*image_weights"):
        load_image_encoder("timm:vit_small_patch16_224.dino")


def test_timm_backbone_from_local_weights(tmp_path):
    import timm

    from dermkit.methods.fusion import load_image_encoder
    from dermkit.models.checkpoint import save_tensors

    torch.manual_seed(1)
    source = timm.create_model("test_vit", pretrained=False, num_classes=0)
    save_tensors(tmp_path / "model.safetensors", source.state_dict())
    enc = load_image_encoder("timm:test_vit", weights=str(tmp_path / "model.safetensors"))
    for (k, v), (_, w) in zip(source.state_dict().items(), enc.module.state_dict().items()):
        assert torch.equal(v, w), k
    with pytest.raises(ModelError, match="does not fit"):
        load_image_encoder("timm:test_resnet", weights=str(tmp_path / "model.safetensors"))


# ------------------------------------------------------------------------------ real rows


@requires_shared_data
def test_derm7pt_real_rows():
    card = load_card("derm7pt")
    cols = fusion_meta_columns(card)
    assert not any(c.startswith(("breslow", "diagnosis")) or c == "management" for c in cols)
    rows = card.rows("train")
    mm = build_rows(card, "train", ["derm", "clin"], MetadataEncoder.fit(rows, cols, card.missing_values),
                    with_prompts=True)
    assert mm.meta.shape[0] == len(rows) and np.isfinite(mm.meta).all()
    copies = rows["clinic_is_derm_copy"].astype(str).eq("1").to_numpy()
    assert all(p is None for p, c in zip(mm.views["clin"], copies) if c)  # derm copies are not clinical views
    assert mm.thickness_kind == "ordinal"
    mel = (rows["diagnosis"] == "melanoma").to_numpy()
    assert np.isnan(mm.thickness[~mel]).all() and np.isfinite(mm.thickness[mel]).sum() > 100
    assert all("melanoma" not in p and "nevus" not in p for p in mm.prompts)
    assert "elevation" in mm.prompts[0] and "lesion on the" in mm.prompts[0]


@requires_shared_data
def test_pad_real_rows_exclude_biopsed_and_unk():
    card = load_card("pad_ufes20")
    cols = fusion_meta_columns(card)
    assert "biopsed" not in cols and "age" in cols
    rows = card.rows("test")
    enc = MetadataEncoder.fit(card.rows("train"), cols, card.missing_values)
    x = enc.transform(rows)
    names = enc.feature_names
    unk = rows["smoke"].isna() | (rows["smoke"] == "UNK")
    assert (x[:, names.index("smoke:missing")] == unk.to_numpy()).all()
    mm = build_rows(card, rows, ["clin"], enc)
    assert mm.thickness_kind is None and all(p is not None for p in mm.views["clin"])
    with pytest.raises(ConfigError, match="no dermoscopic"):
        view_paths(card, rows, "derm")


@requires_shared_data
def test_fusion_end_to_end_on_real_derm7pt_cases(tmp_path, clip_folder):
    """A few dozen real Derm7pt cases (copied to tmp_path), tiny CLIP, 2 epochs: the whole pipeline."""

    src = SHARED_DATA / "derm7pt"
    table = pd.read_csv(src / "metadata.csv", dtype=str, keep_default_na=False, na_values=[""])
    picked = []
    for split, n in (("train", 5), ("val", 2), ("test", 2)):
        part = table[table["split"] == split]
        for _, group in part.groupby("diagnosis"):
            picked.append(group.head(n))
    sub = pd.concat(picked)
    root = tmp_path / "derm7pt_small"
    for column in ("image", "clinic_image"):
        for rel in sub[column]:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, root / rel)
    sub.to_csv(root / "metadata.csv", index=False)
    (root / "dataset.yaml").write_text("base_card: derm7pt\nname: derm7pt_small\n")
    summary = run_config(_config(root, clip_folder, tmp_path, use_clinical=True, use_meta=True, epochs=2),
                         tmp_path / "run", progress=False)
    assert summary["dataset"] == "derm7pt_small" and summary["thickness"]["kind"] == "ordinal"
    assert summary["thickness"]["n"] == int(((sub["split"] == "test") & sub["breslow_ordinal"].notna()).sum())
