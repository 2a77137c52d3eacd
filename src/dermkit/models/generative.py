"""Generative vision-language models (transformers image-text-to-text: LLaVA, LLaVA-NeXT layouts of
llava-hf) answering closed-ended questions: free-text generation, or option scoring by likelihood,
and LoRA adapters (peft) on their language model.

``generate`` mode: the checkpoint's chat template, greedy decoding. ``options`` mode: each answer
option's token sequence is scored by its mean log-likelihood given the prompt (length-normalised),
and the scores are softmaxed into class probabilities, so accuracy, calibration and a real AUC
come out. Answers are appended to a JSONL file question by question, so a killed run resumes where
it stopped (answered question ids are skipped).

LoRA: :func:`add_lora` wraps the model with peft adapters on the language model's linear layers
(vision tower and projector frozen unless asked); adapters are saved as peft folders
(``adapter_config.json`` + ``adapter_model.safetensors``) and read back only from safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dermkit.data.images import open_image
from dermkit.errors import DataError, ModelError
from dermkit.inputs import read_jsonl
from dermkit.io import output_file, replace_dir

__all__ = ["load_generative", "answer_questions", "option_probabilities", "answer_batch", "add_lora",
           "lora_tensors", "load_adapter", "apply_adapter", "peft_config_dict", "save_adapter", "resolve_adapter",
           "folder_fingerprint", "memory_estimate", "check_transformers_folder", "LANGUAGE_LINEAR"]

CONVERSION_HINT = ("convert it once with transformers' script "
                   "(transformers/models/llava/convert_llava_weights_to_hf.py) to the llava-hf layout")
# The language model's linear layers (llama / mistral / qwen naming) under ``language_model``.
LANGUAGE_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def check_transformers_folder(folder: Path) -> dict:
    """The ``config.json`` of a transformers model folder that :func:`load_generative` can load.

    A :class:`ModelError` when ``config.json`` is missing or not JSON, or when the folder holds an
    original LLaVA(-Med) checkpoint that transformers cannot load (with the conversion hint).
    """
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(f"{folder} is not a transformers model folder (no config.json); save the model with "
                         "save_pretrained (model + processor) into one folder")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{config} is not valid JSON ({exc})") from exc
    if cfg.get("model_type") in ("llava_mistral", "llava_llama"):
        raise ModelError(f"{folder} holds an original LLaVA(-Med) checkpoint (model_type {cfg['model_type']!r}), "
                         f"which transformers cannot load; {CONVERSION_HINT}")
    return cfg


def load_generative(folder: str | os.PathLike, device: str = "cpu", adapter: str | os.PathLike | None = None):
    """``(model, processor)`` from a local folder in the transformers layout (safetensors only),
    with a LoRA ``adapter`` folder applied when given."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = Path(folder).expanduser()
    check_transformers_folder(folder)
    if not any(folder.glob("*.safetensors")):
        raise ModelError(f"{folder} has no safetensors weights; dermkit never unpickles .bin files: re-save with "
                         "save_pretrained(folder, safe_serialization=True)")
    try:
        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the image-text-to-text model in {folder} ({exc})") from exc
    if adapter is not None:
        model = load_adapter(model, adapter)
    return model.to(device).eval(), processor


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """A cheap identity of a transformers folder: config.json, and each safetensors file's size,
    header (names, shapes, dtypes, offsets) and first and last MiB of tensor data. A 7B model is
    fingerprinted in milliseconds; changed weights change the header or the sampled bytes."""
    folder = Path(folder)
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for path in sorted(folder.glob("*.safetensors")):
        size = path.stat().st_size
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            digest.update(path.name.encode() + size.to_bytes(8, "little") + fh.read(n))
            digest.update(fh.read(1 << 20))
            fh.seek(max(8 + n, size - (1 << 20)))
            digest.update(fh.read())
    return digest.hexdigest()[:16]


def chat_prompt(processor, question: str) -> str:
    """The model's chat template around one image and one question (generation prompt appended)."""
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conv, add_generation_prompt=True)


def _option_ids(processor, option: str) -> list[int]:
    return processor.tokenizer(" " + option, add_special_tokens=False)["input_ids"]


def _pad_id(processor) -> int:
    tok = processor.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


@torch.inference_mode()
def option_probabilities(model, processor, image, question: str, options: Sequence[str]) -> np.ndarray:
    """Class probabilities of one image: each option's mean token log-likelihood after the chat
    prompt (one right-padded batch of prompt + option), softmaxed over the options."""
    base = processor(images=image, text=chat_prompt(processor, question), return_tensors="pt")
    prompt_ids = base["input_ids"][0]
    n_prompt = len(prompt_ids)
    option_ids = [_option_ids(processor, o) for o in options]
    if any(len(ids) == 0 for ids in option_ids):
        raise ModelError(f"an answer option tokenizes to nothing: {options}")
    width = n_prompt + max(len(ids) for ids in option_ids)
    input_ids = torch.full((len(options), width), _pad_id(processor), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, ids in enumerate(option_ids):
        input_ids[i, :n_prompt] = prompt_ids
        input_ids[i, n_prompt:n_prompt + len(ids)] = torch.as_tensor(ids)
        mask[i, :n_prompt + len(ids)] = 1
    pixels = base["pixel_values"].expand(len(options), *base["pixel_values"].shape[1:])
    extra = {k: v.expand(len(options), *v.shape[1:]) for k, v in base.items()
             if k not in ("input_ids", "attention_mask", "pixel_values") and torch.is_tensor(v)}
    device = model.device
    logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), pixel_values=pixels.to(device),
                   **{k: v.to(device) for k, v in extra.items()}).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    scores = []
    for i, ids in enumerate(option_ids):
        positions = torch.arange(n_prompt - 1, n_prompt - 1 + len(ids), device=device)
        scores.append(float(logp[i, positions, torch.as_tensor(ids, device=device)].mean()))
    scores = np.asarray(scores)
    probs = np.exp(scores - scores.max())
    return probs / probs.sum()


def answer_batch(processor, images: Sequence, questions: Sequence[str], answers: Sequence[str]) -> dict:
    """A right-padded training batch: chat prompt + `` answer`` + eos; only the answer tokens (and
    eos) carry labels, the prompt and padding are -100."""
    tok = processor.tokenizer
    rows, labels, pixels, extras = [], [], [], {}
    for image, question, answer in zip(images, questions, answers):
        base = processor(images=image, text=chat_prompt(processor, question), return_tensors="pt")
        prompt_ids = base["input_ids"][0].tolist()
        target = _option_ids(processor, answer) + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
        rows.append(prompt_ids + target)
        labels.append([-100] * len(prompt_ids) + target)
        pixels.append(base["pixel_values"])
        for k, v in base.items():
            if k not in ("input_ids", "attention_mask", "pixel_values") and torch.is_tensor(v):
                extras.setdefault(k, []).append(v)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), _pad_id(processor), dtype=torch.long)
    label_t = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, (r, lab) in enumerate(zip(rows, labels)):
        input_ids[i, :len(r)] = torch.as_tensor(r)
        label_t[i, :len(lab)] = torch.as_tensor(lab)
        mask[i, :len(r)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": label_t, "pixel_values": torch.cat(pixels)}
    batch.update({k: torch.cat(v) for k, v in extras.items()})
    return batch


def answer_questions(model, processor, questions: Sequence[dict], image_root: str | os.PathLike,
                     out: str | os.PathLike, mode: str = "generate", options: Sequence[str] | None = None,
                     classes: Sequence[str] | None = None, max_new_tokens: int = 32, model_id: str = "",
                     progress: bool = True) -> dict:
    """Answer every question not yet in ``out`` (JSONL, appended line by line); returns counts."""
    from tqdm.auto import tqdm

    if mode not in ("generate", "options"):
        raise ModelError(f"mode must be generate or options, got {mode!r}")
    if mode == "options" and (not options or not classes or len(options) != len(classes)):
        raise ModelError("options mode needs the answer options and their classes")
    out = output_file(out, "--out (the answers file)")  # DataError for a folder, before any work
    done = set()
    if out.is_file():  # a rerun: the answers already there (DataError naming a damaged line)
        for n, record in read_jsonl(out, "answers file"):
            if not isinstance(record, dict) or "question_id" not in record:
                raise DataError(f"{out} line {n}: not an answer record (no question_id); is --out the answers "
                                "file of an earlier `dermkit vqa run`?")
            done.add(str(record["question_id"]))
    todo = [q for q in questions if str(q["question_id"]) not in done]
    with open(out, "a", encoding="utf-8") as fh:
        for q in tqdm(todo, desc=f"vqa {mode}", disable=not progress):
            image = open_image(Path(image_root) / q["image"])
            record = {"question_id": q["question_id"], "prompt": q["text"],
                      "answer_id": f"{model_id}-{q['question_id']}", "model_id": model_id}
            if mode == "generate":
                prompt = chat_prompt(processor, q["text"])
                inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device)
                with torch.inference_mode():
                    ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
                record["text"] = processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:],
                                                            skip_special_tokens=True).strip()
            else:
                probs = option_probabilities(model, processor, image, q["text"], options)
                record["text"] = options[int(probs.argmax())]
                record["probs"] = {c: float(p) for c, p in zip(classes, probs)}
            fh.write(json.dumps(record) + "\n")
            fh.flush()
    return {"answered": len(todo), "skipped": len(done & {str(q["question_id"]) for q in questions})}


# ------------------------------------------------------------------------------ LoRA (peft)


def _target_regex(targets: Sequence[str]) -> str:
    return r".*language_model.*\.(" + "|".join(map(str, targets)) + r")$"


def add_lora(model, rank: int = 8, alpha: float = 16, dropout: float = 0.05,
             targets: Sequence[str] = LANGUAGE_LINEAR, tune_projector: bool = False, tune_vision: bool = False):
    """peft LoRA adapters on the language model's linear layers named in ``targets``; everything
    else frozen (the projector / vision tower are trained fully only when asked)."""
    from peft import LoraConfig, get_peft_model

    modules_to_save = [n for n, on in (("multi_modal_projector", tune_projector), ("vision_tower", tune_vision)) if on]
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=_target_regex(targets),
                        modules_to_save=modules_to_save or None, bias="none")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ModelError(f"no language-model linear layer matches lora_targets {list(targets)} ({exc}); name "
                         f"layers of the model's language model, e.g. {list(LANGUAGE_LINEAR)}") from exc


def lora_tensors(model) -> dict[str, torch.Tensor]:
    """The adapter's own tensors (peft's state-dict naming), on CPU, contiguous."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def save_adapter(model, folder: str | os.PathLike) -> Path:
    """A peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``), written atomically."""
    import shutil

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True)
    replace_dir(tmp, folder)
    return folder


def resolve_adapter(path: str | os.PathLike) -> Path:
    """An adapter folder from itself, a vqa run folder (``RUN/adapter``) or its model folder."""
    path = Path(path).expanduser()
    for candidate in (path, path / "adapter", path / "model" / "adapter"):
        if (candidate / ADAPTER_CONFIG).is_file():
            if not (candidate / ADAPTER_WEIGHTS).is_file():
                raise ModelError(f"{candidate} has no {ADAPTER_WEIGHTS}; dermkit reads adapters only from "
                                 "safetensors (re-save with save_pretrained(..., safe_serialization=True))")
            return candidate
    raise ModelError(f"{path} holds no LoRA adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}); pass the adapter "
                     "folder a `dermkit vqa lora` run wrote (RUN/adapter)")


def apply_adapter(model, peft_config: dict, tensors: dict[str, torch.Tensor], where: str = "the adapter"):
    """``model`` wrapped with a peft adapter described by ``peft_config`` (its adapter_config.json
    as a dict) holding ``tensors``; refused when the tensors do not fit the model."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict

    try:
        config = PeftConfig.from_peft_type(**{k: v for k, v in peft_config.items() if k != "inference_mode"})
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"{where}: not a peft adapter config ({exc})") from exc
    config.inference_mode = True
    peft_model = get_peft_model(model, config)
    result = set_peft_model_state_dict(peft_model, tensors)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ModelError(f"{where} does not fit this model (unexpected keys, e.g. {unexpected[:3]}); it was trained "
                         "on another base model")
    return peft_model.eval()


def load_adapter(model, folder: str | os.PathLike):
    """``model`` with the peft adapter folder ``folder`` (config + safetensors weights) applied."""
    from safetensors.torch import load_file

    folder = resolve_adapter(folder)
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{folder / ADAPTER_CONFIG} is not valid JSON ({exc})") from exc
    return apply_adapter(model, config, load_file(str(folder / ADAPTER_WEIGHTS)), where=str(folder))


def peft_config_dict(peft_model) -> dict:
    """The adapter's config as JSON-able data (what adapter_config.json holds)."""
    config = peft_model.peft_config["default"].to_dict()
    return json.loads(json.dumps(config, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))


# ------------------------------------------------------------------------------ memory


def memory_estimate(folder: str | os.PathLike, dtype_bytes: int = 2, lora_rank: int | None = None,
                    targets: Sequence[str] = LANGUAGE_LINEAR) -> dict:
    """Memory needed to run (and LoRA-train) the model in ``folder``, from its config alone: the
    model is built on the meta device (no weights read), its parameters counted.

    Inference: the weights at ``dtype_bytes`` (2 = bf16/fp16). LoRA training adds the adapter's
    fp32 weights, gradients and AdamW moments (16 bytes a parameter); activations are not
    counted (they grow with batch size and sequence length; gradient checkpointing cuts them).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    folder = Path(folder).expanduser()
    check_transformers_folder(folder)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    out = {"parameters": int(total), "weights_gib": total * dtype_bytes / 2**30, "dtype_bytes": dtype_bytes}
    if lora_rank:
        import re

        pattern = re.compile(_target_regex(targets))
        lora = sum(lora_rank * (m.in_features + m.out_features) for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and pattern.match(name))
        out.update(lora_parameters=int(lora), lora_training_gib=out["weights_gib"] + lora * 16 / 2**30)
    return out
