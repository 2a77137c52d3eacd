"""Bad input, round two (issue 31, root causes 3-6): bounded inputs, outside files read by the common
readers, messages that point at the right place, and input no longer accepted silently.

Every CLI case: exit status 2, the message's words, no traceback, a short message (a bad value is
quoted as an excerpt), no output folder left behind and the finished run left unchanged. Server
cases: the HTTP status and the message's words. Known answers: a 6 MB answer is refused at once
by `vqa score`, and answer parsing does work linear in the answer's length.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermkit.cli import main

BIG_ANSWER = "melanoma " * 666_667  # 6,000,003 characters


@pytest.fixture(scope="module")
def world(tmp_path_factory, clip_folder):
    """A dataset, its questions, and a finished zero-shot run (the earlier run no case may touch)."""
    from conftest import make_dataset

    root = tmp_path_factory.mktemp("round2")
    os.environ.setdefault("DERMKIT_CACHE", str(root / "cache"))
    data = make_dataset(root)
    run_dir = root / "finished"
    config = root / "zs.yaml"
    config.write_text(json.dumps({"method": "zeroshot", "model": str(clip_folder), "data": str(data),
                                  "n_bootstrap": 10, "num_workers": 0}))
    assert main(["run", str(config), "--out", str(run_dir)]) == 0
    questions = root / "q.jsonl"
    assert main(["vqa", "questions", "--data", str(data), "--out", str(questions)]) == 0
    records = [json.loads(line) for line in questions.read_text().splitlines()]
    return {"root": root, "data": data, "run": run_dir, "model": run_dir / "model", "questions": questions,
            "records": records, "image": sorted((data / "images").glob("*.jpg"))[0]}


# ------------------------------------------------------------------------------ builders


def _write(path: Path, content: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def _config(w, t, text: str, check: bool = False) -> list[str]:
    head = "method: supervised\nmodel: resnet18\nimage_size: 32\nepochs: 1\nnum_workers: 0\n"
    path = _write(t / "c.yaml", head + text.replace("{data}", str(w["data"])))
    return ["run", "--check", path] if check else ["run", path, "--out", str(t / "out")]


def _alias_levels() -> list[str]:
    """The billion laughs: 9 values, each level 9 aliases of the one before (9^9 values expanded)."""
    levels = ['&a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"&{name} [{', '.join(['*' + prev] * 9)}]")
    return levels


def _alias_bomb() -> str:
    return "".join(f"{level[1]}: {level}\n" for level in _alias_levels())


def _bomb_config(w, t) -> list[str]:
    # inside known keys: the anchors in eval_data's list, the last level as data
    levels = "".join(f"  - {level}\n" for level in _alias_levels())
    path = _write(t / "c.yaml", f"method: supervised\nmodel: resnet18\neval_data:\n{levels}data: *i\n")
    return ["run", "--check", path]


def _score(w, t, answers: str | bytes, name: str = "a.jsonl", questions: Path | None = None) -> list[str]:
    return ["vqa", "score", "--questions", str(questions or w["questions"]), "--answers", _write(t / name, answers),
            "--data", str(w["data"]), "--out", str(t / "out"), "--n-bootstrap", "10"]


def _answers(w, texts: list[str]) -> str:
    return "".join(json.dumps({"question_id": r["question_id"], "text": x}) + "\n"
                   for r, x in zip(w["records"], texts))


def _dup_questions(w, t) -> Path:
    first = json.dumps(w["records"][0])
    return Path(_write(t / "q2.jsonl", first + "\n" + first + "\n"))


def _jpeg(path: Path, colour=(120, 60, 60)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), colour).save(path, format="JPEG")


HAM_HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization\n"


def _ham(t, rows: list[str], images: tuple[str, ...] = ("ISIC_1", "ISIC_2", "ISIC_3")) -> str:
    release = t / "release"
    _write(release / "HAM10000_metadata.csv", HAM_HEADER + "".join(r + "\n" for r in rows))
    for i, name in enumerate(images):
        _jpeg(release / "HAM10000_images_part_1" / f"{name}.jpg", (40 * i, 90, 60))
    return str(release)


HAM_ROWS = ["HAM_1,ISIC_1,mel,histo,50,male,back", "HAM_2,ISIC_2,nv,histo,40,female,face",
            "HAM_3,ISIC_3,bcc,histo,70,male,scalp"]


def _ham_zip(t, inner_member: str | None = None) -> str:
    """HAM10000 as one zip holding the metadata and a nested image-part zip (optionally an unsafe member)."""
    part = io.BytesIO()
    with zipfile.ZipFile(part, "w") as zf:
        buffer = io.BytesIO()
        Image.new("RGB", (40, 40), (90, 60, 60)).save(buffer, format="JPEG")
        zf.writestr("ISIC_1.jpg", buffer.getvalue())
        if inner_member:
            zf.writestr(inner_member, b"x")
    archive = t / "release.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("HAM10000_metadata.csv", HAM_HEADER + "".join(r + "\n" for r in HAM_ROWS))
        zf.writestr("parts/HAM10000_images_part_1.zip", part.getvalue())
    return str(archive)


def _csv_release(t, truncate: bool = False, notes: list[str] | None = None, *extra: str) -> list[str]:
    """An image folder + labels.csv for `data import csv` (4 images of each of 3 classes; ``notes``:
    the 12 cells of its last column)."""
    rows = []
    for c, colour in zip(("bcc", "mel", "nv"), ((200, 60, 60), (60, 190, 70), (60, 80, 200))):
        for i in range(4):
            rel = f"img/{c}_{i}.jpg"
            _jpeg(t / "src" / rel, tuple(int(v + 9 * i) for v in colour))
            rows.append(f"{rel},{c},lesion_{c}_{i},{notes[len(rows)] if notes else 'ok'}")
    if truncate:
        victim = t / "src" / "img" / "mel_2.jpg"
        victim.write_bytes(victim.read_bytes()[:120])
    labels = _write(t / "src" / "labels.csv", "path,label,lesion,note\n" + "".join(r + "\n" for r in rows))
    return ["data", "import", "csv", "--from", labels, "--image-column", "path", "--label-column", "label",
            "--group-column", "lesion", "--out", str(t / "out"), *extra]


SPLITS = ["train", "train", "val", "test"] * 3


# (id, argv builder (world, tmp) -> argv, words the message must hold, words it must not hold)
CASES = [
    # ---- 3. bounds: configs, cells, answers; short excerpts of bad values
    ("config-alias-bomb", _bomb_config, ["c.yaml line", "expands to more than 100,000 values", "alias"], []),
    ("config-value-too-long", lambda w, t: _config(w, t, f"data: {w['data']}\nname: {'x' * 100_000}\n", True),
     ["c.yaml line", "the value of name is 100,000 characters", "limited to 65,536"], []),
    ("config-file-too-large", lambda w, t: _config(w, t, "data: {data}\n# " + "x" * (1 << 21) + "\n"),
     ["config file", "c.yaml is 2,097,", "the limit is 1,048,576"], []),
    ("config-nested-too-deep", lambda w, t: _config(w, t, "data: {data}\ntask: " + "[" * 100 + "]" * 100 + "\n", True),
     ["c.yaml line", "nested more than 64 levels"], []),
    ("config-long-bad-value-is-excerpted", lambda w, t: _config(w, t, f"data: {{data}}\nlr: {'f' * 5000}\n", True),
     ["lr must be a number", "(5,000 characters)"], []),
    ("vqa-score-6mb-answer", lambda w, t: _score(w, t, _answers(w, [BIG_ANSWER])),
     ["a.jsonl line 1", "6,000,003 characters", "an answer is limited to 65,536"], []),
    ("import-csv-cell-too-long", lambda w, t: _csv_release(t, False, ["ok"] + ["x" * 70_000] + ["ok"] * 10),
     ["labels.csv line 3, column 'note'", "a cell of 70,000 characters", "limited to 65,536"], []),
    # ---- 4. outside files: empty / repeated ids, non-UTF-8 bytes, an output path that is a folder
    ("import-ham-empty-id", lambda w, t: ["data", "import", "ham10000", "--from", _ham(t, [
        HAM_ROWS[0], "HAM_2,,nv,histo,40,female,face", HAM_ROWS[2]]), "--out", str(t / "out")],
     ["HAM10000_metadata.csv line 3, column 'image_id'", "the id is empty"], []),
    ("import-ham-repeated-id", lambda w, t: ["data", "import", "ham10000", "--from", _ham(t, [
        HAM_ROWS[0], HAM_ROWS[1], "HAM_3,ISIC_1,bcc,histo,70,male,scalp"]), "--out", str(t / "out")],
     ["HAM10000_metadata.csv lines 2, 4, column 'image_id'", "'ISIC_1' is listed 2 times"], []),
    ("vqa-answers-not-utf8", lambda w, t: _score(w, t, _answers(w, ["mel"]).encode() + b'{"question_id": "x", '
                                                 b'"text": "m\xe9lanome"}\n'),
     ["a.jsonl line 2, column 32", "byte 0xe9 is not UTF-8", "save the file as UTF-8"], []),
    ("vqa-answers-csv-not-utf8", lambda w, t: _score(w, t, f"question_id,text\n{w['records'][0]['question_id']},"
                                                     "mel\nq,na\xefve\n".encode("latin-1"), "a.csv"),
     ["a.csv line 3, column 5", "not UTF-8"], []),
    ("vqa-answers-bad-json", lambda w, t: _score(w, t, _answers(w, ["mel"]) + '{"question_id": "x", "text": }\n'),
     ["a.jsonl line 2, column 30", "not valid JSON"], []),
    ("vqa-questions-out-is-a-folder", lambda w, t: ["vqa", "questions", "--data", str(w["data"]), "--out",
                                                    str(t / "q_folder.jsonl")],
     ["q_folder.jsonl is an existing folder, not a file"], []),
    ("predict-out-is-a-folder", lambda w, t: ["predict", str(w["image"]), "--model", str(w["model"]), "--out",
                                              str(t / "p_folder.csv")], ["p_folder.csv is an existing folder"], []),
    ("data-split-out-under-a-file", lambda w, t: ["data", "split", str(w["data"]), "--out",
                                                  str(t / "a_file" / "split.csv"), "--force"],
     ["a_file is a file, not a folder"], []),
    # ---- 5. messages: the release's own files, the outer zip, no option the command lacks, the fix, "empty"
    ("import-csv-problem-named-in-the-release", lambda w, t: _csv_release(t, truncate=True),
     ["fails `dermkit data check` as imported", "nothing was written", "labels.csv line 8 (image",
      "mel_2.jpg)", "truncated"], ["metadata.csv"]),
    ("import-zip-missing-image-names-the-zip", lambda w, t: ["data", "import", "ham10000", "--from", _ham_zip(t),
                                                             "--out", str(t / "out")],
     ["release.zip: HAM10000_metadata.csv lines 3, 4", "not in the release (ISIC_2, ISIC_3)"], [".import-"]),
    ("import-nested-zip-member-names-the-outer-zip", lambda w, t: ["data", "import", "ham10000", "--from",
                                                                   _ham_zip(t, "../evil.jpg"), "--out",
                                                                   str(t / "out")],
     ["release.zip: parts/HAM10000_images_part_1.zip: member '../evil.jpg'", "climbs out"], [".import-"]),
    ("vqa-duplicate-question-ids", lambda w, t: _score(w, t, _answers(w, ["mel"]), questions=_dup_questions(w, t)),
     ["q2.jsonl lines 1 and 2", "is asked twice", "its own id"], ["--allow-duplicates", "predictions"]),
    ("vqa-answered-twice", lambda w, t: _score(w, t, _answers(w, ["mel"]) * 2),
     ["a.jsonl lines 1 and 2", "is answered twice", "keep one answer per question"], []),
    ("config-lr-1e-3", lambda w, t: _config(w, t, "data: {data}\nlr: 1e-3\n", True),
     ["lr must be a number", "'1e-3'", "write 0.001 (or 1.0e-3)"], []),
    ("config-epochs-quoted", lambda w, t: _config(w, t, "data: {data}\nbatch_size: '8'\n", True),
     ["batch_size must be an integer", "write 8 without quotes"], []),
    ("import-ham-empty-code-says-empty", lambda w, t: ["data", "import", "ham10000", "--from", _ham(t, [
        HAM_ROWS[0], "HAM_2,ISIC_2,,histo,40,female,face", HAM_ROWS[2]]), "--out", str(t / "out")],
     ["HAM10000_metadata.csv line 3, column 'dx'", "the cell is empty"], ["nan"]),
    ("import-csv-empty-split-says-empty", lambda w, t: _csv_release(t, False, SPLITS[:5] + [""] + SPLITS[6:],
                                                                    "--split-column", "note"),
     ["labels.csv line 7, column 'note'", "the split is empty", "write train, val or test"], ["nan"]),
    # ---- 6. no longer accepted silently
    ("vqa-empty-answers-file", lambda w, t: _score(w, t, ""), ["a.jsonl holds no answers"], []),
    ("vqa-answers-csv-header-only", lambda w, t: _score(w, t, "question_id,text\n", "a.csv"),
     ["a.csv holds no answers"], []),
    ("config-duplicate-key", lambda w, t: _config(w, t, "data: {data}\nlr: 0.1\nlr: 0.2\n", True),
     ["c.yaml line 8", "key 'lr' appears twice", "lines 7 and 8", "keep one"], []),
    ("config-duplicate-nested-key", lambda w, t: _config(w, t, "data: {data}\nengine:\n  lr: 0.1\n  lr: 0.2\n"),
     ["key 'lr' appears twice in engine"], []),
    ("check-missing-data-folder", lambda w, t: _config(w, t, f"data: {t / 'nowhere'}\n", True),
     ["c.yaml", "nowhere"], ["does not exist yet"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly(case, world, tmp_path, capsys):
    _, argv, words, absent = case
    (tmp_path / "q_folder.jsonl").mkdir()
    (tmp_path / "p_folder.csv").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    before = {p: p.read_bytes() for p in world["run"].rglob("*") if p.is_file()}
    code = main([str(a) for a in argv(world, tmp_path)])
    captured = capsys.readouterr()
    text = captured.err + captured.out
    flat = " ".join(text.split())
    assert code == 2, text[:2000]
    assert "Traceback" not in text
    assert len(text) < 3000, f"the message is {len(text)} characters: a bad value must be quoted as an excerpt"
    for word in words:
        assert word in flat, (word, flat)
    for word in absent:
        assert word not in flat, (word, flat)
    assert not (tmp_path / "out").exists(), "a refused command left an output folder"
    assert not list(tmp_path.glob(".out.import-*")), "an import left its work folder"
    assert {p: p.read_bytes() for p in world["run"].rglob("*") if p.is_file()} == before


def test_check_refuses_a_missing_data_folder_with_the_runs_message(world, tmp_path, capsys):
    argv = _config(world, tmp_path, f"data: {tmp_path / 'nowhere'}\n")
    assert main(argv) == 2
    ran = capsys.readouterr().err
    assert main(["run", "--check", argv[1]]) == 2
    checked = capsys.readouterr().err
    assert " ".join(ran.split()).split("nowhere", 1)[1] in " ".join(checked.split())


# ------------------------------------------------------------------------------ known answers


def test_a_6mb_answer_is_refused_before_any_parsing(world, tmp_path, capsys, monkeypatch):
    """A 6 MB answer ends `vqa score` at reading, before the parser sees it (the parser is not called)."""
    import dermkit.data.vqa as vqa

    calls = []
    monkeypatch.setattr(vqa.AnswerParser, "parse", lambda self, text: calls.append(len(text)))
    assert main(_score(world, tmp_path, _answers(world, ["mel", BIG_ANSWER]))) == 2
    assert "a.jsonl line 2" in capsys.readouterr().err and calls == []


def test_answer_parsing_does_linear_work(monkeypatch):
    """The quadratic step (each mention searched everything before it for a negation) is gone: the
    text searched per mention is a bounded window, so 8x the answer is 8x the text searched."""
    import dermkit.data.vqa as vqa
    from dermkit.data.card import DatasetCard
    from dermkit.data.card_schema import packaged_spec

    parser = vqa.AnswerParser(DatasetCard(".", packaged_spec("ham10000")))
    searched = []
    window = vqa._last_words
    monkeypatch.setattr(vqa, "_last_words", lambda norm, end: searched.append(len(r := window(norm, end))) or r)

    def work(n: int) -> int:
        searched.clear()
        parsed = parser.parse("it is not a typical melanoma " * n)
        assert (parsed.status, parsed.why) == ("invalid", "only negated mentions (melanoma)")
        return sum(searched)

    # the same window per mention: doubling the answer adds the same work (quadratic: 4x more each time)
    base, double, quadruple = work(2_000), work(4_000), work(8_000)
    assert quadruple - double == 2 * (double - base)
    assert double - base <= 2_000 * 60  # each window is a few words, not the answer so far
    # the window gives the same answers as searching everything before the mention
    for text, cls in [("not bcc, rather a nevus", "nv"), ("it is not a typical melanoma but a nevus", "nv"),
                      ("no signs of a very atypical melanoma", None), ("melanoma, not a nevus", "mel")]:
        assert parser.parse(text).parsed == cls, text


def test_a_long_answer_within_the_limit_is_scored(world, tmp_path, capsys):
    text = "The lesion shows an atypical network; " * 1500 + "most likely mel."  # ~57,000 characters
    answers = _answers(world, [text, "nv", "bcc"])
    assert main(_score(world, tmp_path, answers)) == 0, capsys.readouterr().err
    table = pd.read_csv(tmp_path / "out" / "answers_table.csv", keep_default_na=False)
    assert table.loc[0, "parsed"] == "mel" and table.loc[0, "status"] == "ok"


def test_missing_answers_are_counted_as_missing_not_invalid(world, tmp_path, capsys):
    answers = _answers(world, ["mel", "no idea", "bcc"])  # 3 of the questions answered, one invalid
    assert main(_score(world, tmp_path, answers)) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "vqa.json").read_text())
    n = len(world["records"])
    assert summary["status"]["missing"] == n - 3 and summary["status"]["invalid"] == 1
    table = pd.read_csv(tmp_path / "out" / "answers_table.csv", keep_default_na=False)
    assert set(table.loc[table["status"] == "missing", "why"]) == {"no answer given"}
    assert summary["accuracy"] == pytest.approx(table["correct"].sum() / n)  # missing answers count as wrong


def test_yaml_loader_known_answers():
    import yaml

    from dermkit.errors import ConfigError
    from dermkit.inputs import load_yaml

    ordinary = "a: &x {b: 1, c: [1, 2]}\nd: *x\ne:\n  <<: *x\n  b: 3\nf: 1.0e-3\n"
    assert load_yaml(ordinary, "t.yaml") == yaml.safe_load(ordinary)  # bounded aliases and merge keys still work
    for text, words in [("a: &a [1, *a]\n", "refers to itself"), ("a: 1\nb: {c: 1, c: 2}\n", "key 'c' appears twice"),
                        ("a: !!python/object:os.system x\n", "not valid YAML"), (_alias_bomb(), "alias bomb")]:
        with pytest.raises(ConfigError, match="t.yaml line") as info:
            load_yaml(text, "t.yaml")
        assert words in str(info.value) and len(str(info.value)) < 400


def test_excerpt_quotes_a_short_part_and_says_empty():
    from dermkit.errors import excerpt

    assert [excerpt(v) for v in (None, float("nan"), np.float32("nan"), pd.NA, "", "  ")] == ["empty"] * 6
    assert excerpt("mel") == "'mel'" and excerpt(np.int64(3)) == "3"
    long = excerpt("x" * 10_000, 20)
    assert long == f"{'x' * 20!r}... (10,000 characters)"
    nested: list = []
    nested.append(nested)
    assert len(excerpt(nested)) <= 80 and len(excerpt([list(range(10**4))] * 10**3)) <= 80


def test_a_text_query_below_the_similarity_floor_matches_nothing():
    from dermkit.models.concepts import QUERY_MIN_SIMILARITY, nearest_latents

    directions = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    query = np.array([0.1, 0.0, 0.995])  # cosines 0.0995, 0.0597, 0.995 (|query| = 1.0000)
    assert [(i, round(s, 3)) for i, s in nearest_latents(query, directions, k=3)] == [(2, 0.995), (0, 0.1),
                                                                                    (1, 0.06)]
    assert nearest_latents(query, directions, [0, 1], k=2, min_similarity=QUERY_MIN_SIMILARITY) == []
    assert [i for i, _ in nearest_latents(query, directions, k=3, min_similarity=0.09)] == [2, 0]
    from typer.main import get_command

    from dermkit.cli import app

    option = next(p for p in get_command(app).commands["concepts"].commands["intervene"].params
                  if p.name == "min_similarity")
    assert option.default == QUERY_MIN_SIMILARITY  # the command's default is the library's floor


# ------------------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def client(world):
    from fastapi.testclient import TestClient

    from dermkit.serve import ServeLimits, create_app

    app = create_app(world["model"], ServeLimits(max_field_chars=1000))
    with TestClient(app) as test_client:
        yield test_client


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (180, 90, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("url, data, status, words", [
    ("/api/predict", {"top_k": ["1", "3"]}, 422, ["'top_k' given 2 times", "give it once"]),
    ("/api/predict?explian=1", {}, 422, ["unknown query parameter(s) 'explian'", "/api/predict takes explain"]),
    ("/api/predict?explain=1&explain=0", {}, 422, ["query parameter 'explain' given 2 times"]),
    ("/api/rank?top=3", {"texts": "a nevus"}, 422, ["unknown query parameter(s) 'top'", "takes none"]),
    ("/api/predict", {"top_k": "7" * 1500}, 422, ["'top_k' is 1,500 characters", "limit of one field is 1,000"]),
    ("/api/predict", {"top_k": "7" * 100_000}, 422, ["'top_k' is longer than 1,000 characters"]),
    ("/api/predict", {"age": "x" * 900}, 422, ["unknown field(s) ['age']"]),
    ("/api/rank", {"texts": ["a nevus", "a melanoma"], "top_k": ["1", "2"]}, 422, ["'top_k' given 2 times"]),
], ids=["repeated-field", "unknown-query", "repeated-query", "rank-unknown-query", "long-field", "huge-field",
        "long-unknown-field", "rank-repeated-field"])
def test_server_refuses_repeats_unknown_parameters_and_long_fields(client, url, data, status, words):
    response = client.post(url, files={"image": ("x.png", _png(), "image/png")}, data=data)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, (word, detail)
    assert len(detail) < 600


def test_server_keeps_repeatable_texts_and_answers_good_requests(client):
    ranked = client.post("/api/rank", files={"image": ("x.png", _png(), "image/png")},
                         data={"texts": ["a nevus", "a melanoma"]})
    assert ranked.status_code == 200 and len(ranked.json()["ranked"]) == 2
    assert client.post("/api/predict?explain=0", files={"image": ("x.png", _png(), "image/png")},
                       data={"top_k": "2"}).status_code == 200


def test_a_client_that_disconnects_mid_upload_is_logged_as_a_disconnect(client, caplog):
    """The body stops half-way (http.disconnect): an info line, no error, no traceback, no 500."""
    app = client.app
    body = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + _png()[:40])
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"5000"),
                         (b"host", b"testserver")], "client": ("127.0.0.1", 5), "server": ("testserver", 80)}
    incoming = [{"type": "http.request", "body": body, "more_body": True}, {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    caplog.set_level(logging.INFO)
    asyncio.run(app(scope, receive, send))  # raises if the app let the disconnect escape
    records = [r for r in caplog.records if r.name.startswith(("dermkit", "uvicorn", "fastapi", "starlette"))]
    assert any(r.levelno == logging.INFO and "client disconnected" in r.getMessage() for r in records)
    assert not [r for r in records if r.levelno >= logging.WARNING]
    assert not any(r.exc_info for r in caplog.records)
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [499]
