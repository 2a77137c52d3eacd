"""SAE sweep (dermkit concepts sweep): the grid, TopK's exact sparsity, frontier points equal to single
runs, the files and figure, the CLI (0 on a tiny dataset, 2 on a bad grid), and method sae's auto recipe."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dermkit.cli import main
from dermkit.errors import ConfigError
from dermkit.evaluate.sae_sweep import save_sweep
from dermkit.models.sae import PANDERM2_WIDTH, SAETrainConfig, resolve_activation, sae_metrics, train_sae
from dermkit.models.sae_sweep import SweepPoint, SweepSettings, pareto_front, recommend, run_sweep, sweep_grid


def _data(seed=0, n=600, d=16, m=48, s=3):
    """Sparse non-negative combinations of ``m`` unit atoms plus noise, and a label from the first atoms."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(m, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, m))
    for i in range(n):
        codes[i, rng.choice(m, size=s, replace=False)] = rng.uniform(0.5, 1.5, size=s)
    x = (codes @ atoms + 0.02 * rng.normal(size=(n, d))).astype(np.float32)
    y = (codes[:, :m // 2].sum(axis=1) > codes[:, m // 2:].sum(axis=1)).astype(int)
    return x, y


@pytest.fixture(scope="module")
def swept():
    x, y = _data()
    x_tr, y_tr, x_va, y_va = x[:450], y[:450], x[450:], y[450:]
    settings = SweepSettings(epochs=15, seed=3, lr=3e-3, batch_size=128, max_l0=6, max_dead=1.0)
    points = sweep_grid(["topk", "relu_l1"], [2, 4, 8], [1e-3], [2])
    table = run_sweep(points, x_tr, x_va, (x_tr, y_tr, y_va), ["a", "b"], settings)
    return {"x_tr": x_tr, "y_tr": y_tr, "x_va": x_va, "y_va": y_va, "settings": settings, "points": points,
            "table": table}


def test_grid_points_and_bad_grids():
    points = sweep_grid(["topk", "relu_l1"], [8, 16, 8], [1e-4], [4, 8])
    assert points[:2] == [SweepPoint("topk", 4, k=8), SweepPoint("topk", 4, k=16)]
    assert len(points) == 2 * 2 + 2 and SweepPoint("relu_l1", 8, l1=1e-4) in points
    for args, option in (((["gelu"], [8], [], [4]), "activations"), ((["topk"], [0], [], [4]), "--k"),
                         ((["relu_l1"], [], [-1.0], [4]), "--l1"), ((["topk"], [8], [], [0]), "expansions")):
        with pytest.raises(ConfigError, match=option):
            sweep_grid(*args)


def test_topk_gives_exactly_k_and_beats_a_random_dictionary():
    x, _ = _data(seed=1)
    config = SAETrainConfig(activation="topk", k=4, expansion=3, lr=3e-3, batch_size=128, epochs=25)
    sae, _ = train_sae(x, config, seed=0)
    pre = sae.pre_activations(torch.as_tensor(x)).detach().numpy()
    z = sae.activations(x)
    # Exactly k active wherever the k largest pre-activations are positive; at most k elsewhere.
    positive = np.sort(pre, axis=1)[:, -4] > 0
    assert positive.mean() > 0.9
    assert ((z > 0).sum(axis=1)[positive] == 4).all() and ((z > 0).sum(axis=1) <= 4).all()
    # Lower FVU than the untrained dictionary of the same size (epochs 0: random unit atoms, same init).
    random_sae, _ = train_sae(x, SAETrainConfig(**{**config.__dict__, "epochs": 0}), seed=0)
    assert random_sae.n_latents == sae.n_latents
    assert sae_metrics(sae, x)["fvu"] < 0.5 * sae_metrics(random_sae, x)["fvu"]


def test_auto_activation_follows_the_embedding_width():
    assert resolve_activation("auto", PANDERM2_WIDTH)[0] == "relu_l1"
    used, reason = resolve_activation("auto", 256)
    assert used == "topk" and "256" in reason and "768" in reason
    assert resolve_activation("relu_l1", 256)[0] == "relu_l1"
    x, _ = _data(n=200)
    sae, _ = train_sae(x, SAETrainConfig(activation="auto", k=3, expansion=2, epochs=1, batch_size=64), seed=0)
    assert sae.activation == "topk" and sae.k == 3
    with pytest.raises(ConfigError, match="k"):
        train_sae(x, SAETrainConfig(activation="topk", k=40, expansion=2, epochs=1), seed=0)


def test_frontier_points_equal_single_runs(swept):
    table = swept["table"]
    assert len(table) == 4 and table["frontier"].any()
    assert table["frontier"].tolist() == pareto_front(table)
    for _, row in table[table["frontier"]].iterrows():
        point = SweepPoint(row["activation"], int(row["expansion"]), k=None if pd.isna(row["k"]) else int(row["k"]),
                           l1=None if pd.isna(row["l1"]) else float(row["l1"]))
        s = swept["settings"]
        config = SAETrainConfig(activation=point.activation, expansion=point.expansion, k=point.k or 32,
                                l1=point.l1 or 0.0, lr=s.lr, batch_size=s.batch_size, epochs=s.epochs)
        sae, _ = train_sae(swept["x_tr"], config, seed=s.seed)
        train, val = sae_metrics(sae, swept["x_tr"]), sae_metrics(sae, swept["x_va"])
        assert row["train_fvu"] == pytest.approx(train["fvu"], rel=1e-9)
        assert row["val_fvu"] == pytest.approx(val["fvu"], rel=1e-9)
        assert row["val_mean_l0"] == pytest.approx(val["mean_l0"]) and row["dead"] == train["dead"]
    # TopK rows: L0 <= k on val, and larger k reconstructs better.
    topk = table[table["activation"] == "topk"].sort_values("k")
    assert (topk["val_mean_l0"] <= topk["k"] + 1e-9).all()
    assert topk["val_fvu"].is_monotonic_decreasing


def test_recommendation_rule_and_pareto():
    table = pd.DataFrame({"val_mean_l0": [4.0, 8.0, 16.0, 40.0, 8.0], "val_fvu": [0.5, 0.3, 0.2, 0.1, 0.4],
                          "dead_fraction": [0.0, 0.0, 0.9, 0.0, 0.0],
                          "probe_val_balanced_accuracy": [0.6, 0.7, 0.8, 0.9, 0.7]})
    assert pareto_front(table) == [True, True, True, True, False]
    assert recommend(table, max_l0=32, max_dead=0.5) == 1  # 16 has too many dead latents, 40 too many active
    assert recommend(table, max_l0=32, max_dead=1.0) == 2
    assert recommend(table, max_l0=2, max_dead=1.0) is None


def test_files_and_figure(swept, tmp_path):
    paths = save_sweep(swept["table"], tmp_path, {"encoder": "test", "recommendation_rule": "rule"})
    for key in ("csv", "json", "png"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    saved = json.loads(paths["json"].read_text())
    assert len(saved["points"]) == len(swept["table"]) and saved["encoder"] == "test"
    assert (saved["recommended"] is None) == (not swept["table"]["recommended"].any())
    assert len(pd.read_csv(paths["csv"])) == len(swept["table"])


def test_cli_sweeps_a_tiny_dataset_and_refuses_a_bad_grid(tiny_dataset, clip_folder, tmp_path, capsys):
    out = tmp_path / "sweep"
    common = ["concepts", "sweep", "--model", str(clip_folder), "--data", str(tiny_dataset), "--out", str(out),
              "--num-workers", "0", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main([*common, "--activations", "topk,relu_l1", "--k", "2,4", "--l1", "1e-3", "--expansions", "2",
                 "--epochs", "3", "--batch-size", "32", "--max-l0", "8", "--max-dead", "1"]) == 0, \
        capsys.readouterr().err
    table = pd.read_csv(out / "sweep.csv")
    assert len(table) == 3 and (out / "sweep.png").is_file()
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["d_in"] == 16 and "logistic regression" in saved["probe"] and saved["recommended"] is not None
    capsys.readouterr()
    for bad, option in ((["--activations", "gelu"], "activations"), (["--k", "two"], "--k"),
                        (["--k", "64", "--expansions", "2"], "--k 64"), (["--max-dead", "2"], "--max-dead"),
                        (["--device", "gpu0"], "device must be")):
        assert main([*common, "--epochs", "1", *bad]) == 2
        err = capsys.readouterr().err
        assert option in err and "Traceback" not in err
    # the default device (auto: CUDA when there is one, else the CPU) works
    auto = [a for a in common if a not in ("--device", "cpu")]
    assert main([*auto, "--out", str(tmp_path / "auto"), "--activations", "topk", "--k", "2", "--expansions", "2",
                 "--epochs", "1", "--batch-size", "32"]) == 0, capsys.readouterr().err
