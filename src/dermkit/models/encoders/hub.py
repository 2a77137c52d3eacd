"""``hf-hub:ORG/NAME``: open_clip repositories on the Hugging Face Hub, read from the local HF cache first.

Files already in the HF cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``; see
:func:`~dermkit.models.hf_cache.hf_cache_dir`) are used without any network access; otherwise they
are downloaded unless ``HF_HUB_OFFLINE=1``.
When neither works the error says which files to place where.
"""

from __future__ import annotations

import os
from pathlib import Path

from dermkit.errors import ModelError
from dermkit.models.encoders.base import TOKENIZER_FILES, EncoderWrapper
from dermkit.models.encoders.open_clip import OPEN_CLIP_BIN, OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, load_open_clip_files
from dermkit.models.hf_cache import hf_cache_dir

__all__ = ["load_hub"]


def load_hub(repo_id: str, source: str) -> EncoderWrapper:
    """The open_clip model of Hub repo ``repo_id`` (``ORG/NAME``), from the HF cache or the Hub."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ModelError(f"{source!r}: expected 'hf-hub:org/name'")
    config, weights, online = _hub_files(repo_id)
    folder = Path(config).parent
    if online:  # tokenizer files are optional: fetch them only when the Hub answered anyway
        for name in TOKENIZER_FILES + ("config.json",):
            _hub_file(repo_id, name, allow_download=True)
    return load_open_clip_files(Path(config), Path(weights), folder, source, name=repo_id)


def _hub_files(repo_id: str) -> tuple[str, str, bool]:
    """Paths of the config and weights of an open_clip hub repo: HF cache first, then the Hub."""
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    errors: list[str] = []
    config = _hub_file(repo_id, OPEN_CLIP_CONFIG, allow_download=not offline, errors=errors)
    online = config is not None and not config[1]
    weights = None
    if config is not None:
        for name in (OPEN_CLIP_WEIGHTS, OPEN_CLIP_BIN):
            weights = _hub_file(repo_id, name, allow_download=not offline, errors=errors)
            if weights is not None:
                break
    if config is None or weights is None:
        cache = hf_cache_dir()
        repo_dir = Path(cache) / f"models--{repo_id.replace('/', '--')}"
        why = "HF_HUB_OFFLINE is set" if offline else (
            f"the Hub could not be reached ({errors[-1] if errors else '?'}; set HF_HUB_OFFLINE=1 to skip "
            "the network attempt)"
        )
        raise ModelError(
            f"hf-hub:{repo_id} is not in the local Hugging Face cache and {why}. Download "
            f"{OPEN_CLIP_CONFIG} and {OPEN_CLIP_WEIGHTS} (plus the tokenizer files, if the repo has them) from "
            f"https://huggingface.co/{repo_id} on a machine with internet, then either put them in a folder and "
            f"pass that folder (load_encoder('/path/to/folder') or 'local-dir:/path/to/folder'), or place them in "
            f"the HF cache as {repo_dir}/snapshots/<commit>/<file> with {repo_dir}/refs/main holding <commit>."
        )
    return config[0], weights[0], online


def _hub_file(repo_id: str, filename: str, allow_download: bool, errors: list[str] | None = None):
    """(path, from_cache) of one repo file, or None. The cache is tried first, without network."""
    from huggingface_hub import hf_hub_download

    cache = hf_cache_dir()
    try:
        return hf_hub_download(repo_id, filename, cache_dir=cache, local_files_only=True), True
    except Exception:  # not cached: huggingface_hub raises several types for that
        pass
    if not allow_download:
        return None
    try:
        return hf_hub_download(repo_id, filename, cache_dir=cache), False
    except Exception as exc:  # network/auth/missing-file errors all mean "not available"
        if errors is not None:
            errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
        return None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
