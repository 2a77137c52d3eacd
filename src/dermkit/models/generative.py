"""Generative vision-language models (transformers image-text-to-text: LLaVA, LLaVA-NeXT layouts of
llava-hf) answering closed-ended questions: free-text generation, or option scoring by likelihood.

``generate`` mode: the checkpoint's chat template, greedy decoding. ``options`` mode: each answer
option's token sequence is scored by its mean log-likelihood given the prompt (length-normalised),
and the scores are softmaxed into class probabilities, so accuracy, calibration and a real AUC
come out. Answers are appended to a JSONL file question by question, so a killed run resumes where
it stopped (answered question ids are skipped).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dermkit.errors import ModelError

__all__ = ["load_generative", "answer_questions"]

CONVERSION_HINT = ("convert it once with transformers' script "
                   "(transformers/models/llava/convert_llava_weights_to_hf.py) to the llava-hf layout")


def load_generative(folder: str | os.PathLike, device: str = "cpu"):
    """``(model, processor)`` from a local folder in the transformers layout (safetensors only)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = Path(folder).expanduser()
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(f"{folder} is not a transformers model folder (no config.json); save the model with "
                         "save_pretrained (model + processor) into one folder")
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    if model_type in ("llava_mistral", "llava_llama"):
        raise ModelError(f"{folder} holds an original LLaVA(-Med) checkpoint (model_type {model_type!r}), which "
                         f"transformers cannot load; {CONVERSION_HINT}")
    if not any(folder.glob("*.safetensors")):
        raise ModelError(f"{folder} has no safetensors weights; dermkit never unpickles .bin files: re-save with "
                         "save_pretrained(folder, safe_serialization=True)")
    try:
        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the image-text-to-text model in {folder} ({exc})") from exc
    return model.to(device).eval(), processor


def _prompt(processor, question: str) -> str:
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conv, add_generation_prompt=True)


@torch.inference_mode()
def _option_scores(model, processor, image, prompt: str, options: Sequence[str]) -> np.ndarray:
    """Mean log-likelihood of each option's tokens after ``prompt`` (one forward pass per option)."""
    base = processor(images=image, text=prompt, return_tensors="pt").to(model.device)
    n_prompt = base["input_ids"].shape[1]
    scores = []
    for option in options:
        ids = processor.tokenizer(" " + option, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
        input_ids = torch.cat([base["input_ids"], ids], dim=1)
        mask = torch.ones_like(input_ids)
        logits = model(input_ids=input_ids, attention_mask=mask, pixel_values=base["pixel_values"]).logits
        logp = torch.log_softmax(logits[0, n_prompt - 1:-1].float(), dim=-1)
        scores.append(float(logp.gather(1, ids[0][:, None]).mean()))
    return np.asarray(scores)


def answer_questions(model, processor, questions: Sequence[dict], image_root: str | os.PathLike,
                     out: str | os.PathLike, mode: str = "generate", options: Sequence[str] | None = None,
                     classes: Sequence[str] | None = None, max_new_tokens: int = 32, model_id: str = "",
                     progress: bool = True) -> dict:
    """Answer every question not yet in ``out`` (JSONL, appended line by line); returns counts."""
    from tqdm.auto import tqdm

    from dermkit.data.images import open_image

    if mode not in ("generate", "options"):
        raise ModelError(f"mode must be generate or options, got {mode!r}")
    if mode == "options" and (not options or not classes or len(options) != len(classes)):
        raise ModelError("options mode needs the answer options and their classes")
    out = Path(out)
    done = set()
    if out.is_file():
        for line in out.read_text(encoding="utf-8").splitlines():
            if line.strip():
                done.add(str(json.loads(line)["question_id"]))
    todo = [q for q in questions if str(q["question_id"]) not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as fh:
        for q in tqdm(todo, desc=f"vqa {mode}", disable=not progress):
            image = open_image(Path(image_root) / q["image"])
            prompt = _prompt(processor, q["text"])
            record = {"question_id": q["question_id"], "prompt": q["text"], "answer_id": f"{model_id}-{q['question_id']}",
                      "model_id": model_id}
            if mode == "generate":
                inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device)
                with torch.inference_mode():
                    ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
                record["text"] = processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:],
                                                            skip_special_tokens=True).strip()
            else:
                scores = _option_scores(model, processor, image, prompt, options)
                probs = np.exp(scores - scores.max())
                probs /= probs.sum()
                record["text"] = options[int(probs.argmax())]
                record["probs"] = {c: float(p) for c, p in zip(classes, probs)}
            fh.write(json.dumps(record) + "\n")
            fh.flush()
    return {"answered": len(todo), "skipped": len(done & {str(q["question_id"]) for q in questions})}
