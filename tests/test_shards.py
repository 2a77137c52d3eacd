"""WebDataset shards of image-caption pairs: written from a card (or a CSV) with the images as stored,
the contrastive method's captions and typed metadata; streamed back in a deterministic order per
epoch seed; a card with a missing or unreadable image is refused with its row named and nothing
left behind; and `method: contrastive` trains from them."""

from __future__ import annotations

import io
import json
import math
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import killed_after_first_checkpoint
from dermkit.cli import main
from dermkit.data import load_card
from dermkit.data.captions import captions_for_split
from dermkit.data.shards import (
    ShardReader,
    decode_shard_image,
    expand_shards,
    write_shards,
)
from dermkit.errors import ConfigError, DataError
from dermkit.runtime import epoch_seed


def _members(folder):
    """{key: {extension: bytes}} of every shard in ``folder``, read with the standard tarfile module."""
    out: dict[str, dict[str, bytes]] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                out.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return out


def _pattern(folder, manifest):
    return str(folder / manifest["pattern"])


def test_shards_hold_the_stored_images_the_method_captions_and_typed_metadata(tmp_path, tiny_dataset):
    card = load_card(tiny_dataset)
    manifest = write_shards(tiny_dataset, tmp_path / "shards", maxcount=10, captions_per_image=2, caption_seed=3)
    rows = card.rows("train")
    assert manifest["samples"] == len(rows) == 48
    assert [s["name"] for s in manifest["shards"]] == [f"{i:06d}.tar" for i in range(5)]
    assert [s["samples"] for s in manifest["shards"]] == [10, 10, 10, 10, 8]
    assert manifest["pattern"] == "{000000..000004}.tar" and manifest["source"]["card"] == "tiny"
    on_disk = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert [s["bytes"] for s in manifest["shards"]] == [(tmp_path / "shards" / s["name"]).stat().st_size
                                                        for s in manifest["shards"]]

    members = _members(tmp_path / "shards")
    assert len(members) == 48
    # Captions: variant k is what the contrastive method writes for its epoch k.
    variants = [captions_for_split(card, "train", seed=epoch_seed(3, k)) for k in range(2)]
    for n, (_, row) in enumerate(rows.iterrows()):
        sample = members[f"{n:09d}"]
        assert set(sample) == {"jpg", "txt", "json", "captions.json"}
        assert sample["jpg"] == (tiny_dataset / row["image"]).read_bytes()  # the file as stored
        assert sample["txt"].decode() == variants[0][n]
        assert json.loads(sample["captions.json"]) == [variants[0][n], variants[1][n]]
        meta = json.loads(sample["json"])
        assert meta["image"] == row["image"] and meta["diagnosis"] == row["diagnosis"]
        assert meta["csv_line"] == int(row["csv_line"]) and meta["group"] == row["lesion_id"]
        assert meta["age"] == int(row["age"]) and isinstance(meta["age"], int) and meta["sex"] == row["sex"]


def test_writing_twice_gives_identical_shards(tmp_path, tiny_dataset):
    write_shards(tiny_dataset, tmp_path / "a", maxcount=20)
    write_shards(tiny_dataset, tmp_path / "b", maxcount=20)
    for shard in sorted((tmp_path / "a").glob("*.tar")):
        assert shard.read_bytes() == (tmp_path / "b" / shard.name).read_bytes()


def test_maxsize_bounds_the_shards(tmp_path, tiny_dataset):
    manifest = write_shards(tiny_dataset, tmp_path / "s", maxsize=20_000)
    assert len(manifest["shards"]) > 1 and sum(s["samples"] for s in manifest["shards"]) == 48
    # webdataset's rule: a shard closes once the bytes of its members reach maxsize (tar headers not counted).
    for shard in manifest["shards"][:-1]:
        with tarfile.open(tmp_path / "s" / shard["name"]) as tar:
            sizes: dict[str, int] = {}
            for member in tar.getmembers():
                key = member.name.split(".", 1)[0]
                sizes[key] = sizes.get(key, 0) + member.size
        payload = sum(sizes.values())
        assert payload - sizes[max(sizes)] < 20_000 <= payload


def test_a_caption_column_is_used_as_is_and_pngs_stay_png(tmp_path, tiny_dataset):
    table = pd.read_csv(tiny_dataset / "metadata.csv")
    table["caption"] = [f"caption number {i}" for i in range(len(table))]
    first = table.index[table["split"] == "train"][0]
    Image.open(tiny_dataset / table.loc[first, "image"]).save(tiny_dataset / "images" / "first.png")
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tiny_dataset / "images" / "second.bmp")
    second = table.index[table["split"] == "train"][1]
    table.loc[first, "image"], table.loc[second, "image"] = "images/first.png", "images/second.bmp"
    table.to_csv(tiny_dataset / "metadata.csv", index=False)
    write_shards(tiny_dataset, tmp_path / "s")
    members = _members(tmp_path / "s")
    assert members["000000000"]["png"] == (tiny_dataset / "images" / "first.png").read_bytes()
    assert members["000000000"]["txt"].decode() == f"caption number {first}"
    # A BMP is re-encoded once, losslessly, as PNG.
    bmp = np.asarray(Image.open(io.BytesIO(members["000000001"]["png"])))
    assert (bmp == np.array([10, 20, 30])).all()


def test_a_plain_image_caption_csv(tmp_path, tiny_dataset):
    images = sorted((tiny_dataset / "images").glob("*.jpg"))[:5]
    pd.DataFrame({"image": [f"images/{p.name}" for p in images], "caption": [f"text {i}" for i in range(5)],
                  "score": [1, 2, 3, 4, 5]}).to_csv(tiny_dataset / "pairs.csv", index=False)
    manifest = write_shards(tiny_dataset / "pairs.csv", tmp_path / "s")
    assert manifest["samples"] == 5 and manifest["source"]["csv"].endswith("pairs.csv")
    samples = sorted(ShardReader(_pattern(tmp_path / "s", manifest), shuffle_buffer=0).epoch(0), key=lambda s: s.key)
    assert [s.caption() for s in samples] == [f"text {i}" for i in range(5)]
    assert [s.meta["score"] for s in samples] == [1, 2, 3, 4, 5]
    assert [s.image for s in samples] == [p.read_bytes() for p in images]


def test_a_plain_csv_path_may_not_leave_its_folder(tmp_path, tiny_dataset):
    pd.DataFrame({"image": ["images/bcc_train_00.jpg", "../outside.jpg"], "caption": ["a", "b"]}).to_csv(
        tiny_dataset / "pairs.csv", index=False)
    with pytest.raises(DataError, match=r"pairs.csv line 3, column 'image'.*leaves the dataset folder"):
        write_shards(tiny_dataset / "pairs.csv", tmp_path / "s")
    pd.DataFrame({"image": ["images/bcc_train_00.jpg"], "text": ["a"]}).to_csv(tiny_dataset / "pairs.csv", index=False)
    with pytest.raises(DataError, match="no 'caption' column"):
        write_shards(tiny_dataset / "pairs.csv", tmp_path / "s")
    assert not (tmp_path / "s").exists()


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if "partial" in p.name or p.name.startswith("."))


def test_a_card_with_a_missing_image_is_refused_naming_the_row(tmp_path, tiny_dataset):
    (tiny_dataset / "images" / "mel_train_03.jpg").unlink()
    (tiny_dataset / "images" / "nv_train_05.jpg").unlink()
    out = tmp_path / "out" / "shards"
    with pytest.raises(DataError) as err:
        write_shards(tiny_dataset, out)
    text = str(err.value)
    line = int(load_card(tiny_dataset).table.index[load_card(tiny_dataset).table["image"]
                                                   == "images/mel_train_03.jpg"][0]) + 2
    assert f"metadata.csv line {line}, column 'image' ('images/mel_train_03.jpg')" in text
    assert "2 of 48 listed images are missing" in text and "no shards were written" in text
    assert not out.exists()


def test_a_card_with_an_unreadable_image_is_refused_and_nothing_is_left(tmp_path, tiny_dataset):
    bad = tiny_dataset / "images" / "nv_train_07.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match=r"line \d+, column 'image' \('images/nv_train_07.jpg'\).*truncated.*"
                                        r"no shards were written"):
        write_shards(tiny_dataset, tmp_path / "out" / "shards", maxcount=5)
    assert not (tmp_path / "out" / "shards").exists() and _leftovers(tmp_path / "out") == []


def test_an_existing_folder_is_replaced_only_with_force(tmp_path, tiny_dataset):
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty.*--force"):
        write_shards(tiny_dataset, out)
    assert (out / "keep.txt").read_text() == "mine"
    write_shards(tiny_dataset, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["000000.tar", "manifest.json"]
    assert _leftovers(tmp_path) == []


def test_bad_arguments_are_refused(tmp_path, tiny_dataset):
    with pytest.raises(ConfigError, match="maxcount"):
        write_shards(tiny_dataset, tmp_path / "s", maxcount=0)
    with pytest.raises(ConfigError, match="split"):
        write_shards(tiny_dataset, tmp_path / "s", split="training")
    with pytest.raises(ConfigError, match="captions_per_image"):
        write_shards(tiny_dataset, tmp_path / "s", captions_per_image=0)
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------ reading


@pytest.fixture
def shards(tmp_path, tiny_dataset):
    manifest = write_shards(tiny_dataset, tmp_path / "shards", maxcount=7)
    return _pattern(tmp_path / "shards", manifest)


def test_an_epoch_is_every_sample_once_in_an_order_fixed_by_its_seed(shards):
    reader = ShardReader(shards, shuffle_buffer=10)
    assert len(reader) == 48 and len(reader.paths) == 7
    first = [s.key for s in reader.epoch(5)]
    assert sorted(first) == [f"{n:09d}" for n in range(48)]
    assert [s.key for s in ShardReader(shards, shuffle_buffer=10).epoch(5)] == first  # same seed, same order
    assert [s.key for s in reader.epoch(6)] != first
    # Resumable position: skipping K samples gives the rest of the same sequence.
    assert [s.key for s in reader.epoch(5, skip=17)] == first[17:]
    assert list(reader.epoch(5, skip=48)) == []


def test_the_shard_order_is_shuffled_and_the_buffer_mixes_shards(shards):
    samples = list(ShardReader(shards, shuffle_buffer=0).epoch(3))
    plain = [s.key for s in samples]
    order = list(dict.fromkeys(s.shard for s in samples))  # no buffer: whole shards, in a shuffled order
    assert len(order) == 7 and order != sorted(order)
    assert plain == [s.key for shard in order for s in samples if s.shard == shard]
    assert plain == [f"{n:09d}" for shard in order for n in range(7 * int(shard[-10:-4]), 7 * int(shard[-10:-4]) + 7)
                     if n < 48]
    mixed = [s.key for s in ShardReader(shards, shuffle_buffer=20).epoch(3)]
    assert mixed != plain and sorted(mixed) == sorted(plain)


def test_samples_decode_to_the_stored_image(shards, tiny_dataset):
    sample = next(ShardReader(shards).epoch(0))
    expected = np.array(Image.open(tiny_dataset / sample.meta["image"]).convert("RGB"))
    assert torch.equal(decode_shard_image(sample), torch.from_numpy(expected).permute(2, 0, 1))
    assert decode_shard_image(sample, max_side=16).shape == (3, 16, 16)


def test_a_list_of_patterns_and_files(shards, tmp_path):
    files = expand_shards(shards)
    reader = ShardReader([str(f) for f in files[:2]] + [str(tmp_path / "shards" / "{000002..000006}.tar")])
    assert len(reader) == 48
    with pytest.raises(ConfigError, match="named twice"):
        ShardReader([str(files[0]), str(files[0])])


def test_reader_errors_name_the_shard(shards, tmp_path):
    with pytest.raises(DataError, match=r"000007.tar .*does not exist \(3 of the 10 it names\)"):
        ShardReader(str(tmp_path / "shards" / "{000000..000009}.tar"))
    with pytest.raises(ConfigError, match="only local tar files"):
        ShardReader("pipe:cat /etc/passwd")
    with pytest.raises(ConfigError, match="only local tar files"):
        ShardReader("https://example.org/{000000..000001}.tar")
    manifest = tmp_path / "shards" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["shards"] = data["shards"][:-1]
    manifest.write_text(json.dumps(data))
    with pytest.raises(DataError, match="does not list shard 000006.tar"):
        ShardReader(shards)
    manifest.unlink()
    with pytest.raises(DataError, match="manifest.json not found"):
        ShardReader(shards)


def test_a_corrupt_shard_is_named(shards, tmp_path):
    target = tmp_path / "shards" / "000003.tar"
    target.write_bytes(b"\x00garbage" * 100 + target.read_bytes()[:700])
    with pytest.raises(DataError, match="000003.tar"):
        list(ShardReader(shards).epoch(0))


# ------------------------------------------------------------------------------ training from shards


def test_contrastive_trains_one_step_from_shards(tmp_path, tiny_dataset, clip_folder, shards):
    """One optimizer step on the first global batch of the stream; the logged loss is the loss of that
    batch computed by hand with the starting model (augment none = a deterministic resize)."""
    from dermkit.data.torchdata import eval_transform
    from dermkit.engine.losses import soft_clip_loss
    from dermkit.experiment import run_experiment
    from dermkit.models.checkpoint import load_tensors
    from dermkit.models.encoders import load_encoder

    cfg = {"method": "contrastive", "init": str(clip_folder), "shards": shards, "shuffle_buffer": 10,
           "train_data": [str(tiny_dataset)], "data": str(tiny_dataset), "eval_data": [], "batch_size": 8,
           "augment": "none", "train_image_last": None, "train_text_last": None, "num_workers": 0,
           "val_per_dataset": 6, "n_bootstrap": 0,
           "engine": {"epochs": 1, "max_steps_per_epoch": 1, "lr": 1e-3, "precision": "fp32", "warmup_epochs": 0,
                      "channels_last": False, "device": "cpu", "seed": 2}}
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    assert summary["pairs"] == 48 and len(summary["shards"]) == 7

    enc = load_encoder(clip_folder)
    batch = [s for s, _ in zip(ShardReader(shards, shuffle_buffer=10).epoch(epoch_seed(2, 0)), range(8))]
    transform = eval_transform(enc.image_size, enc.mean, enc.std)
    pixels = torch.stack([transform(decode_shard_image(s, int(enc.image_size * 1.15))) for s in batch])
    captions = [s.caption(0) for s in batch]
    ids = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    with torch.no_grad():
        expected = soft_clip_loss(enc.module.encode_image(pixels), enc.module.encode_text(enc.tokenize(captions)),
                                  enc.module.logit_scale.exp(), torch.tensor([ids[c] for c in captions]))
    history = json.loads((tmp_path / "run/checkpoints/last.json").read_text())["loop"]["history"]
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
    assert history[0]["train_loss"] == pytest.approx(expected.item(), rel=1e-5)
    trained = load_tensors(tmp_path / "run/checkpoints/last.safetensors")
    init = load_tensors(clip_folder / "open_clip_model.safetensors")
    assert any(not torch.equal(trained[f"model.{k}"], v) for k, v in init.items())
    assert (tmp_path / "run/model/open_clip_config.json").is_file()


def test_a_run_from_shards_killed_after_an_epoch_resumes_to_the_same_weights(tmp_path, tiny_dataset, clip_folder,
                                                                            shards, monkeypatch):
    """The engine re-runs an interrupted epoch from its start; the stream's order, captions and
    augmentations are functions of (seed, epoch), so the resumed run is the uninterrupted one."""
    from dermkit.experiment import run_experiment
    from dermkit.models.checkpoint import load_tensors

    cfg = {"method": "contrastive", "init": str(clip_folder), "shards": shards, "shuffle_buffer": 10,
           "train_data": [str(tiny_dataset)], "data": str(tiny_dataset), "eval_data": [], "batch_size": 8,
           "augment": "strong", "train_image_last": None, "train_text_last": None, "num_workers": 2,
           "val_per_dataset": 6, "n_bootstrap": 0,
           "engine": {"epochs": 2, "max_steps_per_epoch": 2, "lr": 1e-3, "precision": "fp32", "warmup_epochs": 0,
                      "channels_last": False, "device": "cpu"}}
    run_experiment(cfg, tmp_path / "whole", progress=False)
    with killed_after_first_checkpoint(), pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "killed", progress=False)
    run_experiment(cfg, tmp_path / "killed", resume=True, progress=False)
    whole = load_tensors(tmp_path / "whole/checkpoints/last.safetensors")
    resumed = load_tensors(tmp_path / "killed/checkpoints/last.safetensors")
    assert set(whole) == set(resumed)
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)


def test_contrastive_config_refuses_missing_shards(tmp_path, tiny_dataset, clip_folder):
    from dermkit.experiment import run_experiment

    cfg = {"method": "contrastive", "init": str(clip_folder), "shards": str(tmp_path / "none/{000000..000001}.tar"),
           "train_data": [str(tiny_dataset)], "data": str(tiny_dataset)}
    with pytest.raises(ConfigError, match=r"shards: shard .*000000.tar .*does not exist"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="shuffle_buffer"):
        run_experiment({**cfg, "shuffle_buffer": -1}, tmp_path / "run", progress=False)


# ------------------------------------------------------------------------------ command line


def test_data_shards_command(tmp_path, tiny_dataset, capsys):
    assert main(["data", "shards", str(tiny_dataset), "--out", str(tmp_path / "s"), "--maxcount", "30"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "wrote 48 image-caption pairs in 2 shards" in out
    assert f"--shards '{tmp_path / 's'}/{{000000..000001}}.tar'" in out
    (tiny_dataset / "images" / "bcc_train_02.jpg").unlink()
    assert main(["data", "shards", str(tiny_dataset), "--out", str(tmp_path / "t")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "column 'image' ('images/bcc_train_02.jpg')" in err and "Traceback" not in err
    assert not (tmp_path / "t").exists()
