"""Dataset folders whose images/ is a symlink to where the images really live.

Refused by default with a message that names the link and says how to allow it; followed
deliberately with ``follow_symlinks: true`` in dataset.yaml or ``dermkit data check
--follow-symlinks``. CSV paths must still stay inside the folder as written (no absolute path, no
``..`` out of it), with or without follow_symlinks.
"""

from __future__ import annotations

import os
import shutil

import pytest
import yaml

from conftest import make_dataset
from dermkit.cli import main
from dermkit.data import check_dataset, load_card, open_image, resolve_image_path
from dermkit.data.tasks import derive_task
from dermkit.errors import DataError

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")


@pytest.fixture
def linked(tmp_path):
    """A dataset folder whose images/ is a symlink to store/images elsewhere in tmp_path."""
    root = make_dataset(tmp_path / "datasets")
    store = tmp_path / "store"
    store.mkdir()
    shutil.move(str(root / "images"), str(store / "images"))
    os.symlink(store / "images", root / "images", target_is_directory=True)
    return root


def _set_yaml(root, **keys):
    path = root / "dataset.yaml"
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    spec.update(keys)
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")


def _set_image(root, row: int, value: str) -> int:
    import pandas as pd

    df = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    df.loc[row, "image"] = value
    df.to_csv(root / "metadata.csv", index=False)
    return row + 2  # CSV line (header = 1)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_helpful(text: str):
    assert "outside the dataset folder" in text
    assert "symlink" in text
    assert "follow_symlinks: true" in text and "dataset.yaml" in text
    assert "--follow-symlinks" in text


# ----------------------------------------------------------------------------- refused by default
def test_refused_by_default_with_a_helpful_message(linked):
    card = load_card(linked)
    assert card.follow_symlinks is False
    result = check_dataset(card, check_images=False, progress=False)
    assert not result.ok
    unsafe = [p for p in result.errors if p.kind == "unsafe_path"]
    # One problem for the link, naming the rows that use it, instead of one per image.
    assert len(unsafe) == 1
    problem = unsafe[0]
    _assert_helpful(problem.message + " " + problem.fix)
    assert "images ->" in problem.message and "lines 2, 3" in problem.message
    assert problem.csv_line == 2
    with pytest.raises(DataError) as info:
        card.image_path(card.table["image"][0])
    _assert_helpful(str(info.value))
    with pytest.raises(DataError) as info:
        resolve_image_path(linked, card.table["image"][0])
    _assert_helpful(str(info.value))


def test_cli_refuses_by_default(linked, capsys):
    code, out, err = run(["data", "check", linked, "--no-images"], capsys)
    assert code == 2, out + err
    assert "Traceback" not in out + err
    _assert_helpful(" ".join(err.split()))  # rich may wrap long lines


def test_linked_single_file_is_refused_and_named(tiny_dataset, tmp_path):
    outside = tmp_path / "outside.jpg"
    rel = load_card(tiny_dataset).table["image"][0]
    shutil.copy(tiny_dataset / rel, outside)
    os.symlink(outside, tiny_dataset / "images" / "link.jpg")
    line = _set_image(tiny_dataset, 3, "images/link.jpg")
    result = check_dataset(tiny_dataset, progress=False)
    (problem,) = [p for p in result.errors if p.kind == "unsafe_path"]
    assert problem.csv_line == line and f"line {line}" in problem.message
    assert "images/link.jpg ->" in problem.message
    _assert_helpful(problem.message + " " + problem.fix)
    _set_yaml(tiny_dataset, follow_symlinks=True)
    assert check_dataset(tiny_dataset, progress=False).ok


# ------------------------------------------------------------------------------ allowed on request
def test_card_key_allows_it(linked):
    _set_yaml(linked, follow_symlinks=True)
    card = load_card(linked)
    assert card.follow_symlinks is True
    assert card.to_dict()["follow_symlinks"] is True
    result = check_dataset(card, progress=False)  # decodes every image through the link
    assert result.ok, result.format()
    assert result.images_checked == len(card.table)
    path = card.image_path(card.rows("train")["image"].iloc[0])
    assert path.is_file() and os.access(path, os.R_OK)
    assert path.parent == linked / "images"  # the path as written, inside the folder
    assert open_image(path).size == (32, 32)


def test_cli_flag_allows_it_for_one_check(linked, capsys):
    code, out, err = run(["data", "check", linked, "--follow-symlinks"], capsys)
    assert code == 0, out + err
    assert "ok" in out
    assert check_dataset(linked, follow_symlinks=True, progress=False).ok
    # The flag does not change the card: the next check without it refuses again.
    assert run(["data", "check", linked, "--no-images"], capsys)[0] == 2


def test_cli_with_card_key_needs_no_flag(linked, capsys):
    _set_yaml(linked, follow_symlinks=True)
    code, out, err = run(["data", "check", linked], capsys)
    assert code == 0, out + err


def test_card_key_values(linked):
    for value, expected in [("yes", True), ("false", False), (None, False), (0, False)]:
        _set_yaml(linked, follow_symlinks=value)
        assert load_card(linked).follow_symlinks is expected
    _set_yaml(linked, follow_symlinks="sometimes")
    with pytest.raises(DataError, match="follow_symlinks"):
        load_card(linked)


def test_setting_the_attribute_resets_the_resolver(linked):
    card = load_card(linked)
    rel = card.table["image"][0]
    with pytest.raises(DataError):
        card.image_path(rel)
    card.follow_symlinks = True
    assert card.image_path(rel).is_file()


def test_derived_task_card_keeps_follow_symlinks(linked):
    _set_yaml(linked, follow_symlinks=True)
    derived = derive_task(load_card(linked), "melanoma_vs_rest")
    assert derived.follow_symlinks is True
    assert derived.image_path(derived.table["image"][0]).is_file()


# ---------------------------------------------------------------- still refused with follow_symlinks
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "dotdot-through-link"])
def test_escaping_csv_paths_still_refused(linked, tmp_path, capsys, kind):
    store_file = next((tmp_path / "store" / "images").glob("*.jpg"))
    value = {
        "dotdot": f"../../store/images/{store_file.name}",  # exists on disk
        "absolute": str(store_file),
        "dotdot-through-link": f"images/../../store/images/{store_file.name}",
    }[kind]
    line = _set_image(linked, 5, value)
    _set_yaml(linked, follow_symlinks=True)
    card = load_card(linked)
    with pytest.raises(DataError, match="absolute" if kind == "absolute" else "leaves the dataset folder"):
        card.image_path(value)
    with pytest.raises(DataError):
        resolve_image_path(linked, value, follow_symlinks=True)
    result = check_dataset(card, check_images=False, progress=False)
    (problem,) = [p for p in result.errors if p.kind == "unsafe_path"]
    assert problem.csv_line == line
    code, out, err = run(["data", "check", linked, "--no-images", "--follow-symlinks"], capsys)
    assert code == 2 and "unsafe_path" in err and "Traceback" not in out + err


# --------------------------------------------------------------- leakage checks through the link
def test_leak_checks_still_work_through_the_link(linked, tmp_path):
    import pandas as pd

    _set_yaml(linked, follow_symlinks=True)
    df = pd.read_csv(linked / "metadata.csv", dtype=str, keep_default_na=False)
    train = df.index[df["split"] == "train"][0]
    val = df.index[df["split"] == "val"][0]
    # A byte-identical copy of a train image in val (copied in the real store).
    store = tmp_path / "store"
    shutil.copy(store / df.loc[train, "image"], store / df.loc[val, "image"])
    # And a lesion split across train and test.
    test = df.index[df["split"] == "test"][0]
    df.loc[test, "lesion_id"] = df.loc[train, "lesion_id"]
    df.to_csv(linked / "metadata.csv", index=False)
    result = check_dataset(linked, progress=False)
    kinds = {p.kind for p in result.errors}
    assert "duplicate_image_leak" in kinds and "group_leak" in kinds
    assert "unsafe_path" not in kinds


def test_link_inside_the_folder_needs_nothing(tiny_dataset):
    """A symlink whose target is inside the folder was always fine and stays fine."""
    os.rename(tiny_dataset / "images", tiny_dataset / "real_images")
    os.symlink("real_images", tiny_dataset / "images", target_is_directory=True)
    assert check_dataset(tiny_dataset, progress=False).ok


# ------------------------------------------------------------------ the card in the training code
def test_images_load_for_a_split(linked):
    import numpy as np

    from dermkit.data.torchdata import ImageDataset, eval_transform

    _set_yaml(linked, follow_symlinks=True)
    card = load_card(linked)
    rows = card.rows("val")
    paths = [card.image_path(p) for p in rows["image"]]
    data = ImageDataset(paths, card.labels(rows), eval_transform(32, [0.5] * 3, [0.25] * 3))
    x, y = data[0]
    assert tuple(x.shape) == (3, 32, 32) and int(y) in range(card.num_classes)
    assert len(data) == len(rows) and np.isfinite(x.numpy()).all()


def test_train_and_evaluate_on_a_linked_dataset(linked, tmp_path, capsys):
    """`dermkit train` (select on val, report on test) and `dermkit evaluate --model` on a split,
    all reading the images through the link."""
    pytest.importorskip("torch")
    train = ["train", "--data", linked, "--model", "resnet18", "--no-pretrained", "--epochs", "1",
             "--image-size", "32", "--batch-size", "16", "--num-workers", "0", "--device", "cpu",
             "--precision", "fp32"]
    code, out, err = run([*train, "--out", tmp_path / "refused"], capsys)
    assert code == 2 and "Traceback" not in out + err
    assert "follow_symlinks" in " ".join(err.split())
    _set_yaml(linked, follow_symlinks=True)
    code, out, err = run([*train, "--out", tmp_path / "run"], capsys)
    assert code == 0, out + err
    assert (tmp_path / "run" / "model").is_dir()
    code, out, err = run(["evaluate", "--model", tmp_path / "run" / "model", "--data", linked, "--split", "test",
                          "--n-bootstrap", "20", "--out", tmp_path / "eval"], capsys)
    assert code == 0, out + err
    assert (tmp_path / "eval" / "predictions.csv").is_file()
