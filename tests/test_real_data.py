"""Short training runs on real images (../shared/data) that must beat chance.

Skipped, with the reason, when the shared datasets are not on this machine.
"""

from __future__ import annotations

import pytest

from conftest import requires_shared_data
from dermkit.experiment import run_experiment

pytestmark = [pytest.mark.realdata, requires_shared_data]


@pytest.mark.slow
def test_pretrained_lite0_beats_chance_on_ham10000(tmp_path):
    # ~2,000 training images seen (2 x 30 batches), last blocks only, 128 px: about a minute on 2 cores.
    cfg = {"method": "supervised", "data": "ham10000", "model": "efficientnet_lite0", "image_size": 128,
           "batch_size": 32, "train_last": 4, "num_workers": 0, "n_bootstrap": 200,
           "engine": {"epochs": 2, "lr": 2e-3, "warmup_epochs": 0.3, "max_steps_per_epoch": 30}}
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    test = summary["test"]
    # Chance: balanced accuracy 1/7 = 0.14, macro AUC 0.5.
    assert test["balanced_accuracy"] > 0.25, summary
    assert test["macro_auc"] > 0.70, summary


def test_pretrained_lite0_separates_ph2_classes(tmp_path):
    cfg = {"method": "supervised", "data": "ph2", "model": "efficientnet_lite0", "image_size": 128, "batch_size": 16,
           "train_last": 4, "num_workers": 0, "n_bootstrap": 200,
           "engine": {"epochs": 4, "lr": 2e-3, "warmup_epochs": 0.5}}
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    # 3 classes (common nevus, atypical nevus, melanoma), 25 test images: chance AUC 0.5.
    assert summary["test"]["macro_auc"] > 0.65, summary
