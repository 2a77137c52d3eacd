"""The one training loop.

Every method that trains weights (supervised classifiers now; contrastive CLIP, prompt learning,
fusion later) hands the loop a model, a loss function for a batch and a validation function. The
loop owns what is easy to get wrong: AdamW with warm-up + cosine schedule, mixed precision (bf16
autocast on CPU and CUDA, fp16 + GradScaler on older GPUs), gradient accumulation and clipping,
model selection and early stopping on a validation metric, checkpointing every epoch and exact
resume, progress bars, TensorBoard and CSV logs.

Resume is exact by construction: every epoch re-seeds all RNGs from (seed, epoch) and builds its
own data order from that seed, so epoch k after a resume sees the same batches, augmentations
and dropout masks as epoch k of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from dermkit.engine import distributed
from dermkit.errors import ConfigError, ModelError
from dermkit.io import write_csv, write_json
from dermkit.models.checkpoint import load_tensors, save_tensors
from dermkit.models.integrity import state_dict_problem
from dermkit.runtime import (
    choose_cpu_precision,
    epoch_seed,
    keep_depthwise_fp32,
    resolve_device,
    resolve_precision,
    seed_everything,
)

CHECKPOINT_DIR = "checkpoints"


@dataclass
class EngineConfig:
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    select_metric: str = "balanced_accuracy"
    select_mode: str = "max"  # "max" or "min"
    patience: int | None = None  # epochs without improvement before stopping; None = never stop early
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    channels_last: bool = True
    seed: int = 0
    max_steps_per_epoch: int | None = None  # for smoke tests and quick sweeps
    ema: float | None = None  # decay of an exponential moving average of the weights (timm ModelEmaV3), e.g.
    # 0.999; the average is what is validated, selected and saved. None: no EMA.
    ema_warmup: bool = True  # ramp the decay up over the first steps (timm's warm-up), so early EMA is not stale
    layer_decay: float | None = None  # layer-wise lr decay (timm models): block k of K learns at lr * d^(K-k)

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError("epochs must be >= 1")
        if self.select_mode not in ("max", "min"):
            raise ConfigError("select_mode must be 'max' or 'min'")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError("precision must be one of auto, fp32, bf16, fp16")
        if self.grad_accum < 1:
            raise ConfigError("grad_accum must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ConfigError("weight_decay and warmup_epochs must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError("patience must be >= 1 (or null: never stop early)")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError("max_steps_per_epoch must be >= 1 (or null)")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError("max_grad_norm must be > 0 (or null: no clipping)")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"layer_decay must be in (0, 1] such as 0.75 (or null), got {self.layer_decay}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ConfigError(f"ema must be a decay in (0, 1) such as 0.999 (or null: no EMA), got {self.ema}")


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class LoopState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_score: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    # ``precision: auto`` on a CPU: what the probe chose and why (kept by checkpoints, so a resumed run
    # keeps the precision it started with)
    precision: dict[str, Any] | None = None


class Engine:
    """Runs ``fit`` for one model; see the module docstring."""

    def __init__(self, model: nn.Module, config: EngineConfig, out_dir: str | Path, progress: bool = True,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None):
        config.validate()
        self.config = config
        self.on_epoch = on_epoch  # called (rank 0) with each epoch's history row, e.g. experiment tracking
        self.out_dir = Path(out_dir)
        self.device = resolve_device(config.device)
        if self.device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            self.device = torch.device("cuda", distributed.local_rank())  # one GPU per process
        self.distributed = distributed.init_from_env(self.device)
        self.amp_dtype = resolve_precision(config.precision, self.device)
        # ``module``: the model itself (what the loss sees, what is saved, validated, averaged). In a
        # distributed run ``fit`` wraps module + loss in DDP (``model``), so gradients are averaged
        # across processes whatever the loss calls (forward, encode_image, a prompt learner...).
        self.module = model.to(self.device)
        if self.device.type == "cpu":  # depthwise convolutions train in fp32 under bf16 autocast (runtime)
            keep_depthwise_fp32(self.module)
        if config.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.model = self.module
        self.main = distributed.is_main()
        self.progress = progress and self.main
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=config.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.state = LoopState()
        self.ema = None
        if config.ema is not None:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.module, decay=config.ema, use_warmup=config.ema_warmup)

    def _param_groups(self) -> list[dict]:
        """AdamW groups: no weight decay on norms and biases; per-part lr multipliers (``lr_scale``)
        from ``layer_decay`` (timm's layer-wise decay over the model's blocks) or the model's own
        ``lr_scales() -> [(parameters, multiplier)]``."""
        config = self.config
        if config.layer_decay is not None:
            from timm.optim import param_groups_layer_decay

            if not hasattr(self.module, "group_matcher"):
                raise ConfigError("layer_decay needs a timm model (it groups parameters by the model's blocks); "
                                  "remove layer_decay for this method")
            groups = param_groups_layer_decay(self.module, weight_decay=config.weight_decay,
                                              layer_decay=config.layer_decay)
            groups = [g for g in groups if g["params"]]
            if not groups:
                raise ConfigError("the model has no trainable parameters")
            return groups
        parts = self.module.lr_scales() if hasattr(self.module, "lr_scales") else [(self.module.parameters(), 1.0)]
        groups = []
        for part, scale in parts:
            params = [p for p in part if p.requires_grad]
            decay = [p for p in params if p.ndim > 1]  # no weight decay on norms and biases
            no_decay = [p for p in params if p.ndim <= 1]
            groups += [{"params": decay, "weight_decay": config.weight_decay, "lr_scale": float(scale)},
                       {"params": no_decay, "weight_decay": 0.0, "lr_scale": float(scale)}]
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise ConfigError("the model has no trainable parameters")
        return groups

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated, selected and saved: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.module

    # ----------------------------------------------------------------- precision helpers
    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.config.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # ----------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_DIR / "last.safetensors"

    def save_checkpoint(self) -> None:
        """Rank 0 writes; every rank waits until the checkpoint is complete."""
        if self.main:
            self._write_checkpoint()
        distributed.barrier()

    def _write_checkpoint(self) -> None:
        tensors = {f"model.{k}": v for k, v in self._model_state().items()}
        opt = self.optimizer.state_dict()
        for pid, pstate in opt["state"].items():
            for name, value in pstate.items():
                tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value)
        tensors["scaler.scale"] = torch.tensor(self.scaler.get_scale() if self.scaler.is_enabled() else 1.0)
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.module.state_dict().items()})
        meta = {
            "loop": asdict(self.state),
            "param_groups": [{k: v for k, v in g.items()} for g in opt["param_groups"]],
        }
        # Tensors first, then the JSON that points at them: a crash in between leaves the
        # previous JSON, whose epoch count is then re-run (never a half-updated state).
        save_tensors(self.checkpoint_path, tensors)
        write_json(self.checkpoint_path.with_suffix(".json"), meta)

    def load_checkpoint(self) -> bool:
        """Restore the last checkpoint if there is one; returns whether it did."""
        meta_path = self.checkpoint_path.with_suffix(".json")
        if not meta_path.is_file():
            return False
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{meta_path} is corrupt ({exc}); "
                             f"delete {self.checkpoint_path.parent} to start over") from exc
        tensors = load_tensors(self.checkpoint_path)
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        expected = set(self._model_state())
        if set(model_state) != expected:
            wrong = sorted(set(model_state) ^ expected)[:3]
            raise ModelError(f"checkpoint {self.checkpoint_path} does not fit this model (keys differ, e.g. {wrong}); "
                             f"delete {self.checkpoint_path.parent} to start over")
        try:
            self.module.load_state_dict(model_state, strict=not hasattr(self.module, "checkpoint_state_dict"))
        except RuntimeError as exc:
            raise ModelError(f"checkpoint {self.checkpoint_path} does not fit this model: {state_dict_problem(exc)}; "
                             f"resume with the config the run started with, or delete {self.checkpoint_path.parent} "
                             "to start over") from None
        if self.ema is not None:
            ema_state = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
            if not ema_state:
                raise ModelError(f"checkpoint {self.checkpoint_path} has no EMA weights but the run asks for ema; "
                                 "resume with the config the run started with")
            self.ema.module.load_state_dict(ema_state, strict=True)
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = value
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        if self.scaler.is_enabled():
            self.scaler.update(float(tensors["scaler.scale"]))
        self.state = LoopState(**meta["loop"])
        return True

    def _choose_precision(self, loss_fn: Callable, batch) -> None:
        """``precision: auto`` on a CPU (:func:`dermkit.runtime.choose_cpu_precision`): rank 0 times
        forward + backward of this batch on a copy of the model in fp32 and in bf16 (the RNG state is
        restored, the model and its gradients are not touched) and every rank takes its choice."""
        import copy

        record = None
        if self.main:
            # A loss may reach the model through closures (frozen-prefix tails, cached text layers) and
            # not only through its argument: the probe then runs the real modules, so their buffers
            # (BatchNorm statistics) are put back afterwards and their gradients cleared (no optimizer
            # step runs, so the parameters do not change).
            saved = [(b, b.detach().clone()) for b in self.module.buffers()]

            def measure(dtype, steps: int = 2) -> float:
                probe = copy.deepcopy(self.module)
                probe.train()
                times = []
                with torch.random.fork_rng(devices=[]):
                    for _ in range(steps + 1):  # the first call warms the kernels up
                        start = time.perf_counter()
                        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                            loss = loss_fn(probe, batch)
                        loss.float().backward()
                        times.append(time.perf_counter() - start)
                        probe.zero_grad(set_to_none=True)
                del probe
                return min(times[1:])

            trainable = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
            shapes = [tuple(t.shape) for t in (batch if isinstance(batch, (list, tuple)) else [batch])
                      if isinstance(t, torch.Tensor)]
            signature = f"{type(self.module).__name__} trainable={trainable} batch={shapes}"
            try:
                _, record = choose_cpu_precision(signature, measure)
            finally:
                with torch.no_grad():
                    for buffer, value in saved:
                        buffer.copy_(value)
                self.optimizer.zero_grad(set_to_none=True)
        record = distributed.broadcast_object(record)
        self.amp_dtype = torch.bfloat16 if record["precision"] == "bf16" else None
        self.state.precision = record
        if self.progress:
            print(f"precision auto: {record['precision']} ({record['reason']})", flush=True)

    def _model_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds of the model: everything, or what the model says is its own
        (``checkpoint_state_dict()``, e.g. only the LoRA adapter of a frozen 7B model)."""
        own = getattr(self.module, "checkpoint_state_dict", None)
        return own() if own is not None else self.module.state_dict()

    # ----------------------------------------------------------------- the loop
    def fit(
        self,
        make_train_batches: Callable[[int], Iterable],
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        validate_fn: Callable[[nn.Module], dict[str, float]],
        on_best: Callable[[nn.Module, dict[str, float]], None],
        steps_per_epoch: int,
        resume: bool = False,
        batch_size_fn: Callable[[Any], int] | None = None,
    ) -> LoopState:
        """Train for ``config.epochs`` epochs (or until early stopping).

        make_train_batches(epoch) -> iterable of batches (built from the epoch seed);
        loss_fn(model, batch) -> scalar loss (called under autocast);
        validate_fn(model) -> metrics dict containing ``config.select_metric``;
        on_best(model, metrics) is called whenever the selection metric improves.
        """
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        cfg = self.config
        if steps_per_epoch < 1:
            raise ConfigError("the training split yields no batch; lower --batch-size or add images")
        if cfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        optimizer_steps = math.ceil(steps_per_epoch / cfg.grad_accum)
        total_steps = optimizer_steps * cfg.epochs
        warmup_steps = int(round(cfg.warmup_epochs * optimizer_steps))
        if resume and self.load_checkpoint():
            print(f"resuming after epoch {self.state.epoch} (best {cfg.select_metric}={self.state.best_score})")
        elif resume:
            raise ConfigError(f"--resume: no checkpoint in {self.checkpoint_path.parent} (the run stopped before its "
                              "first epoch ended); start it again without --resume, with --force to overwrite")
        if self._stopped_early():
            return self.state
        probe_precision = cfg.precision == "auto" and self.device.type == "cpu"
        if probe_precision and self.state.precision is not None:  # resumed: the precision the run started with
            self.amp_dtype = torch.bfloat16 if self.state.precision.get("precision") == "bf16" else None
            probe_precision = False

        compute_loss = loss_fn
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(_LossModule(self.module, loss_fn), device_ids=[self.device.index]
                                                 if self.device.type == "cuda" else None)

            def compute_loss(_, batch):
                return self.model(batch)

        writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard")) if self.main else None
        try:
            for epoch in range(self.state.epoch, cfg.epochs):
                seed_everything(epoch_seed(cfg.seed, epoch))
                self.model.train()
                start, seen, loss_sum, n_batches = time.perf_counter(), 0, 0.0, 0
                bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not self.progress,
                           leave=False)
                self.optimizer.zero_grad(set_to_none=True)
                for i, batch in enumerate(make_train_batches(epoch)):
                    if i >= steps_per_epoch:
                        break
                    step_now = (i + 1) % cfg.grad_accum == 0 or i + 1 == steps_per_epoch
                    n_global = batch_size_fn(batch) if batch_size_fn else None
                    batch = self._local(batch)
                    if probe_precision:  # the first batch of the run: time it in fp32 and bf16, keep the faster
                        probe_precision = False
                        self._choose_precision(loss_fn, batch)
                    with self._sync(step_now), self.autocast():
                        loss = compute_loss(self.module, batch)
                        if not torch.isfinite(loss):
                            raise ModelError(f"loss became {loss.item()} at epoch {epoch + 1}, batch {i + 1}; "
                                             "lower --lr or use --precision fp32")
                        # DDP averages gradients over processes; weighting each process's mean loss by
                        # its share of the global batch makes that average the global batch mean.
                        share = (batch_size_fn(batch) * distributed.world_size() / n_global
                                 if self.distributed and n_global else 1.0)
                        self.scaler.scale(loss * share / cfg.grad_accum).backward()
                    if step_now:
                        self._optimizer_step(lr_factor(self.state.step, total_steps, warmup_steps, cfg.min_lr_ratio))
                    loss_sum += loss.item() * share
                    n_batches += 1
                    seen += n_global or 0
                    bar.set_postfix(loss=f"{loss_sum / n_batches:.4f}",
                                    lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                    bar.update(1)
                bar.close()
                train_seconds = time.perf_counter() - start
                train_loss = distributed.all_reduce_mean(loss_sum / max(1, n_batches))

                # Rank 0 validates (on the unwrapped model or its EMA) and decides; every rank
                # takes its metrics, so selection and early stopping agree everywhere.
                self.model.eval()
                metrics = validate_fn(self.eval_model) if self.main else None
                metrics = distributed.broadcast_object(metrics)
                if cfg.select_metric not in metrics:
                    raise ConfigError(f"select metric {cfg.select_metric!r} "
                                      f"not among validation metrics {sorted(metrics)}")
                score = float(metrics[cfg.select_metric])
                improved = self._is_better(score)
                if improved:
                    self.state.best_score, self.state.best_epoch, self.state.bad_epochs = score, epoch + 1, 0
                    if self.main:
                        on_best(self.eval_model, metrics)
                else:
                    self.state.bad_epochs += 1
                row = {
                    "epoch": epoch + 1,
                    "train_loss": train_loss,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "train_seconds": round(train_seconds, 2),
                    "train_images_per_second": round(seen / train_seconds, 2) if seen else None,
                    **{f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                    "best": improved,
                }
                self.state.history.append(row)
                self.state.epoch = epoch + 1
                if self.main:
                    for key, value in row.items():
                        if isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
                            writer.add_scalar(key.replace("val_", "val/").replace("train_", "train/"), value, epoch + 1)
                    writer.flush()
                    self._write_history()
                    if self.on_epoch is not None:
                        self.on_epoch(row)
                self.save_checkpoint()
                if self.main:
                    print(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f}, "
                          f"val {cfg.select_metric} {score:.4f}{' (best)' if improved else ''}, {train_seconds:.0f}s")
                if self._stopped_early():
                    if self.main:
                        print(f"early stopping: no improvement for {self.state.bad_epochs} epochs")
                    break
        finally:
            if writer is not None:
                writer.close()
        return self.state

    def _local(self, batch):
        """This process's rows of a global batch (the whole batch on one process)."""
        return distributed.local_rows(batch) if self.distributed else batch

    def _sync(self, step_now: bool):
        """DDP's ``no_sync`` on accumulation steps: gradients are averaged once, at the optimizer step."""
        import contextlib

        return self.model.no_sync() if self.distributed and not step_now else contextlib.nullcontext()

    def _optimizer_step(self, factor: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * factor * group.get("lr_scale", 1.0)
        if self.config.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.config.max_grad_norm
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        if self.ema is not None:
            self.ema.update(self.module, step=self.state.step)

    def _is_better(self, score: float) -> bool:
        if math.isnan(score):
            return self.state.best_score is None
        best = self.state.best_score
        if best is None or (isinstance(best, float) and math.isnan(best)):
            return True
        return score > best if self.config.select_mode == "max" else score < best

    def _stopped_early(self) -> bool:
        p = self.config.patience
        return p is not None and self.state.bad_epochs >= p

    def _write_history(self) -> None:
        import pandas as pd

        write_csv(self.out_dir / "history.csv", pd.DataFrame(self.state.history))


class _LossModule(nn.Module):
    """``loss_fn(module, batch)`` as a module's forward, so DDP can wrap any method's loss."""

    def __init__(self, module: nn.Module, loss_fn: Callable):
        super().__init__()
        self.module, self.loss_fn = module, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.module, batch)
