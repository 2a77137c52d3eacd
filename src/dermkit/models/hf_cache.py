"""Where the local Hugging Face cache is: the one place both weight resolvers look.

:func:`hf_cache_dir` is read by :mod:`dermkit.models.timm_weights` (timm's tagged weights) and by
:mod:`dermkit.models.encoders.hub` (open_clip ``hf-hub:`` repositories); it sits below both and
imports nothing of dermkit.
"""

from __future__ import annotations

import os

__all__ = ["hf_cache_dir"]


def hf_cache_dir() -> str:
    """The Hugging Face hub cache folder: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub`` (as huggingface_hub decides)."""
    # Read at call time: huggingface_hub freezes its own constants when it is imported.
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(os.path.expanduser(home), "hub")
