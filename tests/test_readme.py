"""README.md's Python examples run as written (on the shared PH2 data).

Each ```python block runs in a fresh folder. The vision-language example names the dermkit-CLIP
folder that `dermkit run configs/contrastive/dermkit_clip.yaml` writes; here that folder holds the
tiny test CLIP instead (the example checks the API, not the model's accuracy).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from conftest import requires_shared_data

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_examples_of_the_public_api():
    assert len(BLOCKS) >= 2
    text = "\n".join(BLOCKS)
    for name in ("dermkit.run", "dermkit.load_predictor", "dermkit.load_dataset", "dermkit.evaluate",
                 "dermkit.load_model", ".zero_shot", ".encode_image", ".encode_text"):
        assert name in text, name


@requires_shared_data
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch, clip_folder):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    code = BLOCKS[index]
    if "runs/dermkit_clip/model" in code:
        shutil.copytree(clip_folder, tmp_path / "runs" / "dermkit_clip" / "model")
    exec(compile(code, f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})
