"""Sparse autoencoders (models/sae.py) and ``method: sae`` (methods/sae.py): dictionary recovery,
unit-norm atoms, PanDerm-2's state-dict layout, TopK, metrics by hand, config errors, ``dermkit run``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

import dermkit
from conftest import make_dataset
from dermkit.cli import main
from dermkit.errors import ConfigError, ModelError
from dermkit.methods import get_method
from dermkit.models.sae import SAETrainConfig, SparseAutoencoder, sae_metrics, train_sae

torch.set_num_threads(1)


def sparse_dictionary_data(seed=0, n=4096, d=32, m=64, s=3):
    """``n`` samples, each a non-negative combination (weights 0.5..1.5) of ``s`` of ``m`` unit atoms."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(m, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    idx = np.array([rng.choice(m, s, replace=False) for _ in range(n)])
    x = (rng.uniform(0.5, 1.5, size=(n, s, 1)) * atoms[idx]).sum(axis=1)
    return x.astype(np.float32), atoms


RECOVERY = SAETrainConfig(expansion=4, l1=1e-2, lr=3e-3, batch_size=512, epochs=300)


@pytest.fixture(scope="module")
def recovered():
    x, atoms = sparse_dictionary_data()
    sae, history = train_sae(x, RECOVERY, seed=0)
    return sae, history, x, atoms


# ------------------------------------------------------------------ (a), (b) training
def test_sae_recovers_a_known_sparse_dictionary(recovered):
    sae, history, x, atoms = recovered
    learned = sae.W_dec.detach().numpy()
    best = (atoms @ (learned / np.linalg.norm(learned, axis=1, keepdims=True)).T).max(axis=1)
    assert (best > 0.9).mean() >= 0.8, np.sort(best)[:10]
    assert history[-1]["loss"] < history[0]["loss"] and len(history) == RECOVERY.epochs
    m = sae_metrics(sae, x)
    assert m["fvu"] < 0.2 and m["mean_l0"] < 12  # sparse codes (3 atoms per sample) that reconstruct


def test_decoder_atoms_have_unit_norm_after_training(recovered):
    sae = recovered[0]
    np.testing.assert_allclose(sae.W_dec.detach().norm(dim=1).numpy(), 1.0, atol=1e-5)
    sae2 = SparseAutoencoder(4, 8)
    with torch.no_grad():
        sae2.W_dec.copy_(torch.randn(8, 4) * 7)
    np.testing.assert_allclose(sae2.normalize_decoder_().W_dec.detach().norm(dim=1).numpy(), 1.0, atol=1e-6)


def test_training_is_deterministic_for_a_seed():
    x, _ = sparse_dictionary_data(n=256, d=8, m=12)
    config = SAETrainConfig(expansion=2, l1=1e-2, lr=3e-3, batch_size=64, epochs=3)
    a, ha = train_sae(x, config, seed=5)
    b, hb = train_sae(x, config, seed=5)
    c, _ = train_sae(x, config, seed=6)
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name
    assert ha == hb
    assert not torch.equal(a.W_dec, c.W_dec)


def test_dead_latent_resampling_runs_and_is_recorded():
    x, _ = sparse_dictionary_data(n=512, d=8, m=12)
    config = SAETrainConfig(activation="topk", k=2, expansion=8, lr=3e-3, batch_size=128, epochs=10, resample_every=2)
    sae, history = train_sae(x, config, seed=0)
    assert [r["epoch"] for r in history if "resampled" in r] == [2, 4, 6, 8]
    np.testing.assert_allclose(sae.W_dec.detach().norm(dim=1).numpy(), 1.0, atol=1e-5)


# ------------------------------------------------------------------ (d) TopK
def test_topk_keeps_exactly_k_latents():
    x, _ = sparse_dictionary_data(n=1024, d=16, m=32)
    sae, _ = train_sae(x, SAETrainConfig(activation="topk", k=3, expansion=4, lr=3e-3, batch_size=256, epochs=20),
                       seed=0)
    z = sae.activations(x)
    assert ((z > 0).sum(axis=1) == 3).all() and (z >= 0).all()
    other = sae.activations(np.random.default_rng(1).normal(size=(200, 16)))
    assert ((other > 0).sum(axis=1) <= 3).all()
    # Hand-built: pre-activations = x, so the k largest positive coordinates survive.
    hand = SparseAutoencoder(5, 5, activation="topk", k=2)
    with torch.no_grad():
        hand.W_enc.copy_(torch.eye(5))
    z = hand.encode(torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]]))
    assert z.tolist() == [[0.0, 3.0, 0.0, 2.0, 0.0], [5.0, 4.0, 0.0, 0.0, 0.0]]


# ------------------------------------------------------------------ (e) metrics by hand
def test_metrics_match_a_hand_computation():
    sae = SparseAutoencoder(2, 3)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]]))  # latent 2 only fires on x < 0
        sae.b_enc.copy_(torch.tensor([0.0, -0.5, -10.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
        sae.b_dec.copy_(torch.tensor([0.0, 0.0]))
    x = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [0.5, 0.2]], dtype=np.float32)
    z = np.maximum(x @ np.array([[1, 0, -1], [0, 1, -1]]) + np.array([0, -0.5, -10]), 0)
    x_hat = z @ np.array([[1, 0], [0, 1], [0.6, 0.8]])
    np.testing.assert_allclose(sae.activations(x), z, atol=1e-6)
    fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum()
    m = sae_metrics(sae, x, batch_size=3)  # two batches
    assert m["fvu"] == pytest.approx(fvu, rel=1e-6)
    assert m["mse"] == pytest.approx(((x - x_hat) ** 2).mean(), rel=1e-6)
    assert m["mean_l0"] == pytest.approx((z > 0).sum(axis=1).mean()) == pytest.approx(5 / 4)
    assert m["dead"] == 1 and m["dead_fraction"] == pytest.approx(1 / 3) and m["n_latents"] == 3 and m["n"] == 4


# ------------------------------------------------------------------ (c) state dicts
class _TiedBias(nn.Module):
    def __init__(self, bias, pre):
        super().__init__()
        self._bias_reference, self.pre = bias, pre

    def forward(self, x):
        return x - self._bias_reference if self.pre else x + self._bias_reference


class _PanDermSAE(nn.Module):
    """PanDerm-2's SAE (ai-safety-foundation ``sparse_autoencoder``, vendored in DermFM-Zero
    ``automated-concept-discovery/sae``) with ``n_components=1``: same parameter names, shapes and
    forward pass (x - tied_bias -> ReLU(einsum W_e, + b_e) -> einsum W_d -> + tied_bias)."""

    def __init__(self, d, n):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.tied_bias = nn.Parameter(torch.randn(1, d, generator=g) * 0.1)
        self.pre_encoder_bias = _TiedBias(self.tied_bias, True)
        self.encoder = nn.Module()
        self.encoder._weight = nn.Parameter(torch.randn(1, n, d, generator=g))
        self.encoder._bias = nn.Parameter(torch.randn(1, n, generator=g) * 0.1)
        self.decoder = nn.Module()
        self.decoder._weight = nn.Parameter(nn.functional.normalize(torch.randn(1, d, n, generator=g), dim=-2))
        self.post_decoder_bias = _TiedBias(self.tied_bias, False)

    def forward(self, x):  # x: (batch, 1, d) -> (learned (batch, 1, n), decoded (batch, 1, d))
        h = self.pre_encoder_bias(x)
        z = torch.relu(torch.einsum("bcd,cnd->bcn", h, self.encoder._weight) + self.encoder._bias)
        return z, self.post_decoder_bias(torch.einsum("bcn,cdn->bcd", z, self.decoder._weight))


def test_panderm2_state_dict_loads_and_gives_the_same_outputs(tmp_path):
    ref = _PanDermSAE(16, 48)
    state = ref.state_dict()
    assert set(state) == {"tied_bias", "pre_encoder_bias._bias_reference", "encoder._weight", "encoder._bias",
                          "decoder._weight", "post_decoder_bias._bias_reference"}
    x = torch.randn(20, 16)
    z_ref, recon_ref = (t[:, 0] for t in ref(x[:, None]))
    checkpoint = {"model_state_dict": state, "model_config": {"n_input_features": 16, "n_learned_features": 48,
                                                              "n_components": 1}, "train_shape": (20, 16)}
    for given in (state, checkpoint):
        sae = SparseAutoencoder.from_state_dict(given)
        recon, z = sae(x)
        torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(recon, recon_ref, atol=1e-5, rtol=1e-5)
    # Converted once to safetensors (shared tensors cloned), as the method's init_sae reads it.
    from safetensors.torch import save_file

    from dermkit.models.checkpoint import load_tensors

    save_file({k: v.clone().contiguous() for k, v in state.items()}, str(tmp_path / "panderm_sae.safetensors"))
    sae = SparseAutoencoder.from_state_dict(load_tensors(tmp_path / "panderm_sae.safetensors"))
    torch.testing.assert_close(sae.encode(x), z_ref, atol=1e-5, rtol=1e-5)
    # The library's 1.x names (weight/bias, no underscore) and no component axis: the same model.
    renamed = {k.replace("._weight", ".weight").replace("._bias", ".bias") if k.startswith(("encoder", "decoder"))
               else k: v[0] for k, v in state.items()}
    assert "encoder.weight" in renamed and renamed["encoder.weight"].dim() == 2
    torch.testing.assert_close(SparseAutoencoder.from_state_dict(renamed)(x)[0], recon_ref, atol=1e-5, rtol=1e-5)


def test_linear_layout_with_untied_biases_loads_exactly():
    g = torch.Generator().manual_seed(1)
    enc, dec = nn.Linear(8, 24), nn.Linear(24, 8)
    pre_bias = torch.randn(8, generator=g)
    state = {"encoder.weight": enc.weight, "encoder.bias": enc.bias, "decoder.weight": dec.weight,
             "decoder.bias": dec.bias, "pre_bias": pre_bias, "stats_last_nonzero": torch.zeros(24)}
    x = torch.randn(30, 8, generator=g)
    z_ref = torch.relu(enc(x - pre_bias))
    sae = SparseAutoencoder.from_state_dict(state)
    recon, z = sae(x)
    torch.testing.assert_close(z, z_ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recon, dec(z_ref).detach(), atol=1e-5, rtol=1e-5)
    # A plain autoencoder (no pre_bias: nothing subtracted before the encoder) loads exactly too.
    plain = {k: v for k, v in state.items() if k != "pre_bias"}
    recon, z = SparseAutoencoder.from_state_dict(plain)(x)
    torch.testing.assert_close(z, torch.relu(enc(x)).detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recon, dec(torch.relu(enc(x))).detach(), atol=1e-5, rtol=1e-5)
    # OpenAI's tied layout: pre_bias only, no encoder bias, latent_bias instead.
    tied = {"encoder.weight": enc.weight, "latent_bias": enc.bias, "decoder.weight": dec.weight, "pre_bias": pre_bias}
    recon, z = SparseAutoencoder.from_state_dict(tied)(x)
    torch.testing.assert_close(recon, (torch.relu(enc(x - pre_bias)) @ dec.weight.T + pre_bias).detach(),
                               atol=1e-5, rtol=1e-5)
    # dermkit's own layout round-trips exactly, TopK included.
    top = SparseAutoencoder.from_state_dict(sae.state_dict(), activation="topk", k=4)
    again = SparseAutoencoder.from_state_dict(top.state_dict(), activation="topk", k=4)
    assert torch.equal(top.encode(x), again.encode(x)) and ((top.encode(x) > 0).sum(dim=1) <= 4).all()


@pytest.mark.parametrize("state, message", [
    ({"weight": torch.zeros(3, 3)}, "unrecognised SAE state dict layout"),
    ({"W_enc": torch.zeros(4, 6), "b_enc": torch.zeros(6), "W_dec": torch.zeros(6, 5), "b_dec": torch.zeros(4)},
     "do not fit together"),
    ({"W_enc": torch.zeros(4, 6), "b_enc": torch.zeros(6), "W_dec": torch.zeros(6, 4), "b_dec": torch.zeros(4),
      "threshold": torch.zeros(6)}, "threshold"),
    ({"tied_bias": torch.zeros(2, 4), "encoder._weight": torch.zeros(2, 6, 4), "encoder._bias": torch.zeros(2, 6),
      "decoder._weight": torch.zeros(2, 4, 6)}, "single-component"),
    ({"model_state_dict": {}, "model_config": {"n_components": 3}}, "3 components"),
    ("not a dict", "mapping"),
])
def test_unusable_state_dicts_are_a_clear_model_error(state, message):
    with pytest.raises(ModelError, match=message):
        SparseAutoencoder.from_state_dict(state)


# ------------------------------------------------------------------ (f) config errors
@pytest.mark.parametrize("raw, key", [
    ({"expansion": 0}, "expansion"),
    ({"activation": "gelu"}, "activation"),
    ({"l1": -1.0}, "l1"),
    ({"batch_size": 0}, "batch_size"),
    ({"epochs": 0}, "epochs"),
    ({"expansion": "eight"}, "expansion"),
    ({"init_sae": "/no/such/sae.safetensors"}, "init_sae"),
    ({"extra_dat": ["x"]}, "extra_dat"),
])
def test_bad_sae_config_names_the_key(raw, key, tmp_path, capsys):
    with pytest.raises(ConfigError, match=key):
        get_method("sae").config(raw, "sae.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"method": "sae", **raw}))
    assert main(["run", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert key in err and "bad.yaml" in err and "Traceback" not in err


def test_sae_model_is_not_constructible_with_bad_arguments():
    with pytest.raises(ConfigError, match="activation"):
        SparseAutoencoder(4, 8, activation="gelu")
    with pytest.raises(ConfigError, match="k must be"):
        SparseAutoencoder(4, 8, activation="topk", k=9)


# ------------------------------------------------------------------ (g) dermkit run
def _write(tmp_path, name, **keys):
    config = {"method": "sae", "name": name, "num_workers": 0, "expansion": 2, "epochs": 5, "batch_size": 64,
              "l1": 1e-3, "lr": 1e-3, "Cs": [0.1, 1.0], "n_bootstrap": 10, **keys}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_dermkit_run_trains_reports_and_the_folder_predicts(tiny_dataset, clip_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    # An extra dataset whose "train" split holds every image of the run's dataset, val/test included:
    # those copies must not reach the SAE.
    extra = tmp_path / "extra"
    shutil.copytree(tiny_dataset, extra)
    meta = pd.read_csv(extra / "metadata.csv")
    n_val_test = int((meta["split"] != "train").sum())
    meta["split"] = ["train" if s != "train" else s for s in meta["split"]]
    meta.loc[meta.index[:4], "split"] = ["val", "val", "test", "test"]  # two run-train lesions: a valid val/test
    meta.to_csv(extra / "metadata.csv", index=False)
    cfg = yaml.safe_load((extra / "dataset.yaml").read_text())
    (extra / "dataset.yaml").write_text(yaml.safe_dump({**cfg, "name": "extra"}))

    other = make_dataset(tmp_path, name="other", seed=1, counts={"train": 5, "val": 1, "test": 1})  # new images
    path = _write(tmp_path, "tiny_sae", data=str(tiny_dataset), model=str(clip_folder),
                  extra_data=[str(extra), str(other)])
    assert main(["run", str(path), "--check"]) == 0
    run_dir = tmp_path / "run"
    assert main(["run", str(path), "--out", str(run_dir)]) == 0, capsys.readouterr().err

    summary = json.loads((run_dir / "summary.json").read_text())
    sae = summary["sae"]
    # activation: auto (the default) on 16-d embeddings (not PanDerm-2's 768): TopK, the reason recorded.
    assert sae["n_latents"] == 32 and sae["d_in"] == 16 and sae["activation"] == "topk" and sae["k"] == 32
    assert sae["activation_requested"] == "auto" and "768" in sae["activation_reason"]
    for split in ("train", "val"):
        assert {"fvu", "mean_l0", "dead", "n_latents"} <= set(sae[split]) and sae[split]["fvu"] >= 0
    info, info_other = sae["extra_data"]
    # Its other "train" images are the run's own train images: used once, not twice.
    assert info["n_train"] == len(meta) - 4 and info["left_out_in_run_val_or_test"] == n_val_test
    assert info["duplicates_skipped"] == 48 - 4 and info["used"] == 0
    assert info_other["used"] == 15 and info_other["left_out_in_run_val_or_test"] == 0
    assert sae["n_train_embeddings"] == 48 + 15
    assert {"SAE latents", "SAE FVU (val)", "SAE L0 (val)", "SAE dead (train)"} <= set(summary["table_extra"])
    assert len(pd.read_csv(run_dir / "sae_history.csv")) == 5

    predictor = dermkit.load_predictor(run_dir / "model")
    assert predictor.method == "sae" and predictor.classes == ["bcc", "mel", "nv"]
    images = sorted((tiny_dataset / "images").glob("*_test_*.jpg"))[:4]
    proba = predictor.predict_paths(images)
    assert proba.shape == (4, 3) and np.allclose(proba.sum(axis=1), 1)
    acts = predictor.activations(images)
    assert acts.shape == (4, 32) and (acts >= 0).all()
    capsys.readouterr()
    assert main(["predict", str(images[0]), "--model", str(run_dir / "model"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["class"] in predictor.classes

    # (c) save via the model folder -> load -> identical activations and probabilities.
    from dermkit.engine.features import extract_features

    feats = extract_features(predictor.enc, images, progress=False)
    predictor.save(tmp_path / "copy")
    again = dermkit.load_predictor(tmp_path / "copy")
    assert np.array_equal(again.activations(feats), predictor.activations(feats))
    assert np.array_equal(again.activations(feats), acts)
    np.testing.assert_array_equal(again.predict_paths(images), proba)
    for name, value in predictor.sae.state_dict().items():
        assert torch.equal(again.sae.state_dict()[name], value)


def test_init_sae_in_panderm2_layout_is_used_as_it_is(tiny_dataset, clip_folder, tmp_path, monkeypatch, capsys):
    from safetensors.torch import save_file

    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    ref = _PanDermSAE(16, 40)  # the tiny CLIP's embeddings are 16-D
    weights = tmp_path / "panderm_sae.safetensors"
    save_file({k: v.clone().contiguous() for k, v in ref.state_dict().items()}, str(weights))
    path = _write(tmp_path, "panderm_sae", data=str(tiny_dataset), model=str(clip_folder), init_sae=str(weights),
                  epochs=0)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["sae"]["n_latents"] == 40 and summary["sae"]["init_sae"] == str(weights)
    assert not (tmp_path / "run" / "sae_history.csv").exists()
    predictor = dermkit.load_predictor(tmp_path / "run" / "model")
    x = torch.randn(10, 16)
    z_ref, _ = ref(x[:, None])
    np.testing.assert_allclose(predictor.activations(x.numpy()), z_ref[:, 0].detach().numpy(), atol=1e-5)
