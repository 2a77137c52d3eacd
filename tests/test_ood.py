"""Out-of-distribution detector: scores separate far clusters and noise from held-out training-like
features (also with more dimensions than images), calibration accepts the stated share of validation
images, save/load round trip, encoder fingerprint, detection metrics against scikit-learn,
pytorch-ood and hand counts, synthetic outliers and the histogram figure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dermkit.data.outliers import OUTLIER_KINDS, bundled_photos, probe_images, synthetic_outliers
from dermkit.errors import DermkitError, ModelError
from dermkit.evaluate.ood import (
    OOD_CARD,
    OOD_TENSORS,
    OODDetector,
    acceptance_threshold,
    detection_metrics,
    plot_score_histograms,
)

D, C = 64, 3


def _clusters(rng, n, centres, noise=1.0):
    y = rng.integers(0, len(centres), n)
    return centres[y] + rng.normal(0, noise, (n, centres.shape[1])), y


def _probabilities(z, centres, temperature=50.0):
    """Softmax of the negative squared distance to each class centre (a stand-in classifier)."""
    logits = -((z[:, None, :] - centres[None]) ** 2).sum(-1) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def world():
    """Training, validation and test features of 3 Gaussian classes in 64-d, plus far clusters and noise."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (C, D))
    train, y_train = _clusters(rng, 450, centres)
    val, _ = _clusters(rng, 200, centres)
    test, _ = _clusters(rng, 200, centres)
    far, _ = _clusters(rng, 150, centres + rng.normal(0, 4, (C, D)))
    noise = rng.uniform(-8, 8, (150, D))
    data = {"centres": centres, "train": train, "y_train": y_train, "val": val, "test": test, "far": far,
            "noise": noise, "probe": rng.normal(0, 1, (4, D))}
    data["detector"] = OODDetector.fit(train, y_train, seed=0, fingerprint=data["probe"])
    data["detector"].calibrate(val, _probabilities(val, centres), noise[:50], _probabilities(noise[:50], centres))
    return data


def _p(world, name):
    return _probabilities(world[name], world["centres"])


# ------------------------------------------------------------------------------------------- scores
@pytest.mark.parametrize("outliers", ["far", "noise"])
def test_feature_scores_rank_outliers_above_held_out_training_like_images(world, outliers):
    detector = world["detector"]
    ind = detector.scores(world["test"], _p(world, "test"))
    ood = detector.scores(world[outliers], _p(world, outliers))
    assert list(ind) == ["mahalanobis", "knn", "msp"]
    for name in ("mahalanobis", "knn"):
        assert detection_metrics(ind[name], ood[name], n_boot=0)["auroc"] > 0.9, name
        assert np.all(np.isfinite(ind[name])) and np.all(ind[name] >= 0)


def test_mahalanobis_is_the_distance_to_the_closest_class_mean(world):
    detector = world["detector"]
    z = world["test"][:5]
    precision = detector.precision.astype(np.float64)
    by_hand = np.min([np.sqrt(np.einsum("nd,de,ne->n", z - mu, precision, z - mu))
                      for mu in detector.means.astype(np.float64)], axis=0)
    np.testing.assert_allclose(detector.scores(z, None)["mahalanobis"], by_hand, rtol=1e-9)


def test_knn_is_the_distance_to_the_kth_nearest_normalised_training_feature(world):
    detector = world["detector"]
    assert detector.knn_k == min(50, len(world["train"]) // 10) == 45
    z = world["test"][:5]
    bank = detector.bank.astype(np.float64)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    distances = np.sort(np.linalg.norm(unit[:, None] - bank[None], axis=-1), axis=1)
    np.testing.assert_allclose(detector.scores(z, None)["knn"], distances[:, detector.knn_k - 1], rtol=1e-6)


def test_msp_is_one_minus_the_max_probability():
    detector = OODDetector.fit(None, [0, 1, 2])
    p = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(detector.scores(None, p)["msp"], [0.3, 2 / 3, 0.0], atol=1e-12)


def test_shrinkage_keeps_mahalanobis_finite_and_useful_when_dimensions_exceed_images():
    """256-d features, 90 training images: pytorch-ood's own fit (inverse of the scatter matrix plus
    a 1e-6 ridge) gives meaningless distances; the Ledoit-Wolf precision separates the outliers."""
    from pytorch_ood.detector import Mahalanobis

    rng = np.random.default_rng(1)
    centres = rng.normal(0, 0.5, (C, 256))
    train, y_train = _clusters(rng, 90, centres)
    test, _ = _clusters(rng, 100, centres)
    shifted = rng.normal(0, 1, (100, 256)) + rng.normal(0, 0.6, (1, 256))

    detector = OODDetector.fit(train, y_train)
    ind, ood = detector.scores(test, None), detector.scores(shifted, None)
    assert np.all(np.isfinite(ind["mahalanobis"])) and np.all(ind["mahalanobis"] > 0)
    assert detection_metrics(ind["mahalanobis"], ood["mahalanobis"], n_boot=0)["auroc"] > 0.9

    theirs = Mahalanobis(None).fit_features(torch.from_numpy(train).float(), torch.from_numpy(y_train))
    a = theirs.predict_features(torch.from_numpy(test).float()).numpy()
    b = theirs.predict_features(torch.from_numpy(shifted).float()).numpy()
    # half squared distances cannot be negative: the near-singular inverse is numerically meaningless
    assert (a < 0).any() or detection_metrics(a, b, n_boot=0)["auroc"] < 0.8


def test_knn_bank_is_capped_by_a_class_stratified_float16_subsample():
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(900, int), np.ones(90, int), np.full(10, 2)]
    z = rng.normal(0, 1, (1000, 8)) + y[:, None]
    detector = OODDetector.fit(z, y, seed=3, bank_rows=100)
    assert detector.bank.shape == (100, 8) and detector.bank.dtype == np.float16
    assert detector.knn_k == 10
    np.testing.assert_allclose(np.linalg.norm(detector.bank.astype(np.float64), axis=1), 1.0, atol=2e-3)
    again = OODDetector.fit(z, y, seed=3, bank_rows=100)
    np.testing.assert_array_equal(detector.bank, again.bank)
    assert not np.array_equal(detector.bank, OODDetector.fit(z, y, seed=4, bank_rows=100).bank)
    # every bank row is a training row; 90/9/1 rows per class (proportional, the rare class kept)
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    nearest = np.argmin(np.linalg.norm(unit[None] - detector.bank.astype(np.float64)[:, None], axis=-1), axis=1)
    assert np.bincount(y[nearest], minlength=3).tolist() == [90, 9, 1]


def test_features_none_gives_msp_only(world):
    detector = world["detector"]
    assert list(detector.scores(None, _p(world, "test"))) == ["msp"]
    with pytest.raises(ModelError, match="needs the image features"):
        detector.score(None, _p(world, "test"), "mahalanobis")
    only = OODDetector.fit(None, world["y_train"])
    assert only.score_names == ("msp",) and only.feature_dim is None
    only.calibrate(None, _p(world, "val"), None, _p(world, "noise"))
    assert only.default == "msp" and set(only.thresholds) == {"msp"}
    with pytest.raises(ModelError, match="without image features"):
        only.scores(world["test"], _p(world, "test"))


# -------------------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("acceptance", [0.95, 0.8])
@pytest.mark.parametrize("n_val", [200, 37])
def test_calibration_accepts_the_stated_share_of_validation_images(world, acceptance, n_val):
    detector = OODDetector.fit(world["train"], world["y_train"])
    val = world["val"][:n_val]
    p_val = _p(world, "val")[:n_val]
    detector.calibrate(val, p_val, world["noise"], _p(world, "noise"), acceptance=acceptance)
    assert detector.acceptance == acceptance
    for name in detector.score_names:
        accepted = detector.in_domain(val, p_val, name).mean()
        assert accepted == detector.val_accepted[name]
        assert acceptance <= accepted < acceptance + 1 / n_val, name
        assert accepted == math.ceil(acceptance * n_val) / n_val


def test_threshold_ties_accept_every_tied_image():
    assert acceptance_threshold([5, 1, 4, 2, 3], 0.8) == 4
    assert acceptance_threshold([5, 1, 4, 2, 3], 0.6) == 3
    assert acceptance_threshold([5, 1, 4, 2, 3], 1.0) == 5
    assert acceptance_threshold(np.arange(20), 0.95) == 18  # 0.95 * 20 = 19 images, no rounding up to 20
    # msp is 0 for every confident image: all tied images are accepted, and val_accepted says so
    detector = OODDetector.fit(None, [0, 1])
    p = np.r_[np.tile([[1.0, 0.0]], (8, 1)), [[0.6, 0.4], [0.5, 0.5]]]
    detector.calibrate(None, p, None, None, acceptance=0.5)
    assert detector.thresholds["msp"] == 0.0
    assert detector.val_accepted["msp"] == 0.8


def test_default_is_the_best_validation_auroc_ties_in_stated_order(world):
    detector = world["detector"]
    # all three separate uniform noise perfectly: the tie goes to mahalanobis (order: mahalanobis, knn, msp)
    assert detector.val_auroc == {"mahalanobis": 1.0, "knn": 1.0, "msp": 1.0}
    assert detector.default == "mahalanobis"
    # outliers whose features look like training images but whose probabilities are uniform: msp wins
    other = OODDetector.fit(world["train"], world["y_train"])
    uniform = np.full((100, C), 1 / C)
    other.calibrate(world["val"], _p(world, "val"), world["test"][:100], uniform)
    assert other.default == "msp"
    assert other.val_auroc["msp"] == 1.0 > max(other.val_auroc["mahalanobis"], other.val_auroc["knn"])
    assert "msp" in other.describe() and "95.0%" in other.describe()
    # without outliers the first score of the order is the default and no AUROC is recorded
    other.calibrate(world["val"], _p(world, "val"), None, None)
    assert other.default == "mahalanobis" and other.val_auroc == {}


def test_uncalibrated_detector_has_no_default():
    detector = OODDetector.fit(np.eye(4), [0, 0, 1, 1])
    assert detector.default is None
    with pytest.raises(ModelError, match="not calibrated"):
        detector.in_domain(np.eye(4), None)


# --------------------------------------------------------------------------------------- save / load
def test_save_load_gives_identical_scores(world, tmp_path):
    detector = world["detector"]
    assert OODDetector.load(tmp_path) is None
    detector.save(tmp_path / "model")
    card = json.loads((tmp_path / "model" / OOD_CARD).read_text())
    assert card["format"] == "dermkit-ood" and card["format_version"] == 1
    assert card["default"] == "mahalanobis" and "accepts 95.0% of the 200 validation images" in card["description"]
    loaded = OODDetector.load(tmp_path / "model")
    for attr in ("default", "thresholds", "acceptance", "val_auroc", "val_accepted", "n_train", "feature_dim",
                 "knn_k", "n_classes"):
        assert getattr(loaded, attr) == getattr(detector, attr), attr
    np.testing.assert_array_equal(loaded.fingerprint, detector.fingerprint)
    for name in ("test", "far", "noise"):
        before, after = detector.scores(world[name], _p(world, name)), loaded.scores(world[name], _p(world, name))
        for score in before:
            np.testing.assert_array_equal(before[score], after[score])
        np.testing.assert_array_equal(detector.in_domain(world[name], _p(world, name)),
                                      loaded.in_domain(world[name], _p(world, name)))


def test_probabilities_only_detector_round_trip(world, tmp_path):
    only = OODDetector.fit(None, world["y_train"]).calibrate(None, _p(world, "val"), None, _p(world, "noise"))
    only.save(tmp_path)
    assert not (tmp_path / OOD_TENSORS).exists()
    loaded = OODDetector.load(tmp_path)
    assert loaded.score_names == ("msp",) and loaded.thresholds == only.thresholds
    np.testing.assert_array_equal(loaded.score(None, _p(world, "test")), only.score(None, _p(world, "test")))


def test_corrupt_or_mismatched_files_are_refused_naming_the_file(world, tmp_path):
    world["detector"].save(tmp_path)
    tensors = tmp_path / OOD_TENSORS
    good = tensors.read_bytes()
    tensors.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError, match=f"{OOD_TENSORS} does not match.*refit it with `dermkit ood fit --model"):
        OODDetector.load(tmp_path)
    tensors.unlink()
    with pytest.raises(ModelError, match=f"{OOD_TENSORS} is missing"):
        OODDetector.load(tmp_path)
    tensors.write_bytes(good)
    assert OODDetector.load(tmp_path) is not None
    card_path = tmp_path / OOD_CARD
    card = json.loads(card_path.read_text())
    card_path.write_text(card_path.read_text()[:100])
    with pytest.raises(ModelError, match=f"{OOD_CARD} is not valid JSON"):
        OODDetector.load(tmp_path)
    card_path.write_text(json.dumps({**card, "format": "something-else"}))
    with pytest.raises(ModelError, match="is not a dermkit OOD detector"):
        OODDetector.load(tmp_path)
    card_path.write_text(json.dumps({k: v for k, v in card.items() if k != "thresholds"}))
    with pytest.raises(ModelError, match=f"{OOD_CARD} is incomplete"):
        OODDetector.load(tmp_path)
    card_path.write_text(json.dumps({**card, "feature_dim": 32}))
    with pytest.raises(ModelError, match="inconsistent"):
        OODDetector.load(tmp_path)


# -------------------------------------------------------------------------------------- fingerprint
def test_fingerprint_refuses_another_encoder(world, tmp_path):
    world["detector"].save(tmp_path)
    detector = OODDetector.load(tmp_path)
    probe = world["probe"]
    assert detector.check_fingerprint(probe + 1e-6) == pytest.approx(1.0)
    hint = f"refit it with `dermkit ood fit --model {tmp_path} --data DATA`"
    with pytest.raises(ModelError, match="fitted on another encoder \\(feature dimension 32") as other_dim:
        detector.check_fingerprint(probe[:, :32])
    assert f"OOD detector in {tmp_path}" in str(other_dim.value) and hint in str(other_dim.value)
    other = np.random.default_rng(9).normal(0, 1, probe.shape)
    with pytest.raises(ModelError, match="probe-image features differ, cosine") as other_features:
        detector.check_fingerprint(other)
    assert hint in str(other_features.value)
    # A probe image with zero features for both encoders matches (not a cosine of 0); zero for one only does not.
    zero_row = probe.copy()
    zero_row[0] = 0.0
    detector.fingerprint = zero_row.astype(np.float32)
    assert detector.check_fingerprint(zero_row) == pytest.approx(1.0)
    with pytest.raises(ModelError, match="probe-image features differ, cosine 0.75"):
        detector.check_fingerprint(probe)
    with pytest.raises(ModelError, match="feature dimension 32, fitted on 64"):
        detector.scores(world["test"][:, :32], None)


def test_fingerprint_set_at_calibration_and_without_one_only_the_dimension_is_checked(world):
    detector = OODDetector.fit(world["train"], world["y_train"])
    assert detector.fingerprint is None and detector.check_fingerprint(world["probe"]) is None
    with pytest.raises(ModelError, match="feature dimension 8"):
        detector.check_fingerprint(world["probe"][:, :8])
    detector.calibrate(world["val"], _p(world, "val"), world["noise"], _p(world, "noise"), fingerprint=world["probe"])
    np.testing.assert_array_equal(detector.fingerprint, world["probe"].astype(np.float32))


# ------------------------------------------------------------------------------------------ metrics
def test_detection_metrics_by_hand_and_against_sklearn_and_pytorch_ood():
    from pytorch_ood.metrics import OODMetrics
    from sklearn.metrics import roc_auc_score

    id_scores = np.arange(1, 21, dtype=float)  # 1..20
    ood_scores = np.array([15.5, 18, 19.5, 21, 22, 23, 24, 25, 2.5, 30])
    result = detection_metrics(id_scores, ood_scores, n_boot=500, seed=1)
    labels = np.r_[np.zeros(20), np.ones(10)]
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, np.r_[id_scores, ood_scores]))
    # 95% of 20 ID images = 19 accepted: threshold 19; OOD <= 19 are 15.5, 18, 2.5 -> 3 of 10
    assert result["fpr95"] == pytest.approx(0.3)
    # pytorch-ood takes OOD as positives; ID as positives with the negated score gives our convention
    metrics = OODMetrics()
    metrics.update(torch.from_numpy(-np.r_[id_scores, ood_scores]), torch.from_numpy(np.r_[-np.ones(20), np.zeros(10)]))
    theirs = metrics.compute()
    assert result["fpr95"] == pytest.approx(theirs["FPR95TPR"])
    assert result["auroc"] == pytest.approx(theirs["AUROC"])
    assert (result["n_id"], result["n_ood"], result["n_boot"]) == (20, 10, 500)
    for name in ("auroc", "fpr95"):
        ci = result["ci"][name]
        assert ci["low"] <= result[name] <= ci["high"] and ci["level"] == 0.95
    assert detection_metrics(id_scores, ood_scores, n_boot=500, seed=1) == result


def test_detection_metrics_with_ties_match_sklearn_and_pytorch_ood():
    from pytorch_ood.metrics import OODMetrics
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    id_scores = np.round(rng.normal(0, 1, 300), 1)
    ood_scores = np.round(rng.normal(1.5, 1, 120), 1)
    result = detection_metrics(id_scores, ood_scores, n_boot=0)
    scores = np.r_[id_scores, ood_scores]
    assert result["auroc"] == pytest.approx(roc_auc_score(np.r_[np.zeros(300), np.ones(120)], scores))
    metrics = OODMetrics()
    metrics.update(torch.from_numpy(-scores), torch.from_numpy(np.r_[-np.ones(300), np.zeros(120)]))
    assert result["fpr95"] == pytest.approx(metrics.compute()["FPR95TPR"])
    threshold = acceptance_threshold(id_scores, 0.95)
    assert result["fpr95"] == pytest.approx(np.mean(ood_scores <= threshold))
    assert math.isnan(result["ci"]["auroc"]["low"])  # no resamples, no interval


def test_detection_metrics_refuses_bad_input():
    with pytest.raises(DermkitError, match="empty"):
        detection_metrics([], [1.0])
    with pytest.raises(DermkitError, match="NaN"):
        detection_metrics([1.0, np.nan], [1.0])


# ------------------------------------------------------------------------------------ outlier images
def test_synthetic_outliers_are_deterministic_and_of_every_kind():
    first = synthetic_outliers(n=16, size=64, seed=0)
    second = synthetic_outliers(n=16, size=64, seed=0)
    assert [kind for kind, _ in first] == list(OUTLIER_KINDS) * 2
    assert all(image.mode == "RGB" and image.size == (64, 64) for _, image in first)
    assert [image.tobytes() for _, image in first] == [image.tobytes() for _, image in second]
    assert synthetic_outliers(n=4, size=64, seed=0)[3][1].tobytes() == first[3][1].tobytes()  # prefix-stable
    assert synthetic_outliers(n=1, size=64, seed=1)[0][1].tobytes() != first[0][1].tobytes()
    flat = [np.asarray(image) for kind, image in first if kind == "flat_colour"]
    assert (flat[0] == 0).all() and (flat[1] == 255).all()  # black, then white
    text = np.asarray(dict(first)["text_page"])
    assert (text == 255).mean() > 0.5 and (text.min(axis=-1) < 100).any()  # white page, dark ink


def test_probe_images_are_fixed():
    first, second = probe_images(), probe_images()
    assert len(first) == 4
    assert all(image.mode == "RGB" and image.size == (224, 224) for image in first)
    assert [image.tobytes() for image in first] == [image.tobytes() for image in second]
    assert len({image.tobytes() for image in first}) == 4
    # hash noise: every byte value about equally often
    counts = np.bincount(np.asarray(first[0]).ravel(), minlength=256)
    assert counts.min() > 0.5 * counts.mean()


def test_bundled_photos_are_paths_to_existing_images():
    from PIL import Image

    photos = bundled_photos()
    for name, path in photos:
        assert path.is_file() and path.stem == name
        with Image.open(path) as image:
            assert image.size[0] > 0


# ------------------------------------------------------------------------------------------- figure
def test_histogram_png_written(world, tmp_path):
    detector = world["detector"]
    sets = {"test (in-distribution)": detector.score(world["test"], None),
            "far clusters": detector.score(world["far"], None), "uniform noise": detector.score(world["noise"], None)}
    out = plot_score_histograms(sets, detector.thresholds[detector.default], tmp_path / "ood" / "hist.png",
                                title="Mahalanobis scores")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    plot_score_histograms({"constant": np.zeros(5)}, None, tmp_path / "flat.png", None)
    assert (tmp_path / "flat.png").is_file()


# ------------------------------------------------------------------------------------ a real encoder
def test_real_tiny_encoder_end_to_end(tiny_dataset, tmp_path):
    """A random timm ResNet as the image tower: fit on the tiny dataset, refuse another initialisation."""
    import pandas as pd
    import timm
    from PIL import Image

    def encoder(seed):
        torch.manual_seed(seed)
        return timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()

    def features(model, images):
        batch = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB").resize((64, 64)), np.float32) / 255)
                             .permute(2, 0, 1) for im in images])
        with torch.no_grad():
            return model((batch - 0.5) / 0.25).numpy()

    meta = pd.read_csv(tiny_dataset / "metadata.csv")
    images = {split: [Image.open(tiny_dataset / p) for p in rows["image"]] for split, rows in meta.groupby("split")}
    labels = {split: rows["label"].to_numpy() for split, rows in meta.groupby("split")}
    model = encoder(0)
    train, val = features(model, images["train"]), features(model, images["val"])
    outliers = features(model, [image for _, image in synthetic_outliers(n=16, size=64)])
    detector = OODDetector.fit(train, labels["train"], fingerprint=features(model, probe_images()))
    detector.calibrate(val, None, outliers, None)
    assert detector.default in ("mahalanobis", "knn") and detector.feature_dim == train.shape[1]
    detector.save(tmp_path)
    loaded = OODDetector.load(tmp_path)
    assert loaded.check_fingerprint(features(encoder(0), probe_images())) > 0.999
    with pytest.raises(ModelError, match="fitted on another encoder"):
        loaded.check_fingerprint(features(encoder(1), probe_images()))
    np.testing.assert_array_equal(loaded.score(val, None), detector.score(val, None))
