"""Sparse autoencoders (SAEs) on frozen image embeddings: PanDerm-2's concept discovery, step 1.

An SAE rewrites a (L2-normalised) embedding ``x`` (``d_in``) as a sparse, non-negative code ``z``
over an over-complete dictionary of ``n_latents`` unit-norm atoms::

    z     = act(W_enc^T (x - b_dec) + b_enc)        # encode; act: ReLU, or TopK then ReLU
    x_hat = W_dec^T z + b_dec                       # decode; rows of W_dec (n_latents, d_in) = atoms

``b_dec`` is the *tied* pre-encoder bias: subtracted before the encoder, added back after the
decoder. Training (:func:`train_sae`) follows PanDerm-2's recipe (DermFM-Zero,
``automated-concept-discovery/train_sae.py``): loss = mean over the batch of [MSE over features
+ ``l1`` x sum over latents of z] (``relu_l1``; ``topk`` trains on the MSE alone), Adam
(lr 5e-4, betas 0.9/0.999), batch 4096, 200 epochs, expansion 8; after every optimizer step the
decoder atoms are renormalised to unit norm, and the gradient component parallel to each atom is
removed before the step (as PanDerm-2's ``UnitNormDecoder`` backward hook does). Differences,
all documented in :func:`train_sae`: ``b_dec`` starts at the data mean (PanDerm-2: zeros, its
"geometric median" is never passed), ``W_enc`` starts as a scaled ``W_dec^T`` (PanDerm-2:
independent Kaiming init, near zero for its 3-D weight); dead-latent resampling is optional (off
by default; PanDerm-2's resampler is configured so that it practically never fires).

Loading other layouts: :meth:`SparseAutoencoder.from_state_dict` reads

* dermkit's own layout ``{W_enc (d, n), b_enc (n), W_dec (n, d), b_dec (d)}`` (also SAELens');
* PanDerm-2 / DermFM-Zero: its SAE is the ai-safety-foundation ``sparse_autoencoder`` library
  (vendored in DermFM-Zero ``automated-concept-discovery/sae/``, trained with ``n_components=1``,
  saved as ``torch.save({'model_state_dict': sae.state_dict(), 'model_config': {...}})``):
  ``tied_bias (1, d)``, ``pre_encoder_bias._bias_reference``, ``post_decoder_bias._bias_reference``
  (the same tensor again), ``encoder._weight (1, n, d)``, ``encoder._bias (1, n)``,
  ``decoder._weight (1, d, n)``. Also read: the library's 1.x names (``encoder.weight``,
  ``encoder.bias``, ``decoder.weight``), tensors without the component axis, and the whole
  checkpoint dict (``model_state_dict`` inside). dermkit never unpickles: convert PanDerm-2's
  ``autoencoder.pth`` once, in a trusted environment (its tied bias is one tensor under three
  names, hence the clone)::

      state = torch.load("autoencoder.pth", map_location="cpu", weights_only=True)["model_state_dict"]
      state = {k: v.clone().contiguous() for k, v in state.items()}
      safetensors.torch.save_file(state, "panderm2_sae.safetensors")

* the common ``nn.Linear`` layout ``{encoder.weight (n, d), [encoder.bias | latent_bias (n)],
  decoder.weight (d, n), pre_bias (d) and/or decoder.bias (d)}``: OpenAI's ``sparse_autoencoder``
  (``pre_bias`` only, subtracted before the encoder and added after the decoder) and untied
  autoencoders (``decoder.bias`` added after the decoder; ``pre_bias``, if any, subtracted before
  the encoder). Bookkeeping buffers such as ``stats_last_nonzero`` are ignored. An untied bias is
  folded exactly into the tied form: ``b_dec = decoder.bias``,
  ``b_enc' = b_enc + W_enc^T (b_dec - pre_bias)``.

Library or own code: own code (this module; only torch). ``sparse-autoencoder`` (1.10.0, the
library PanDerm-2 vendored an older copy of) adds ``wandb``, ``datasets``, ``pydantic``,
``strenum`` and ``zstandard`` to dermkit's dependencies, is built around TransformerLens-style
activation pipelines, caps Python below 3.12, and renamed the parameters PanDerm-2's checkpoints
use (``_weight`` -> ``weight``), so reading PanDerm-2's files needs a loader of our own anyway.
``overcomplete`` (0.3.0) adds ``opencv-python``, ``scikit-image`` and ``einops`` and its SAEs
have no tied pre-encoder bias (the encoder is a plain linear layer with an optional bias; the
dictionary is normalised inside the forward pass), so PanDerm-2's model is not expressible in it
without rewriting it. The model here is a few dozen lines of torch and is tested exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from dermkit.errors import ConfigError, ModelError

__all__ = ["ACTIVATIONS", "PANDERM2_WIDTH", "SparseAutoencoder", "SAETrainConfig", "resolve_activation", "train_sae",
           "sae_metrics"]

ACTIVATIONS = ("relu_l1", "topk")
#: Width of the embeddings PanDerm-2's SAE recipe (ReLU + L1 3e-5) was tuned on: DermFM-Zero's concept
#: discovery (``automated-concept-discovery/4_intervention_CBM.py``) embeds with open_clip
#: ``PanDerm-large-w-PubMed-256``, whose config (``src/open_clip/model_configs/PanDerm-large-w-PubMed-256.json``,
#: DermFM-Zero commit 4ded01d) has ``embed_dim: 768``.
PANDERM2_WIDTH = 768


def resolve_activation(activation: str, d_in: int) -> tuple[str, str]:
    """``(activation, reason)``: ``auto`` becomes ``relu_l1`` (PanDerm-2's recipe) for embeddings of
    PanDerm-2's width (:data:`PANDERM2_WIDTH`) and ``topk`` otherwise: an L1 strength is tuned to one
    embedding width and norm (on dermkit-CLIP's 256-d embeddings PanDerm-2's 3e-5 left ~700 of 2,048
    latents active), while TopK sets L0 directly whatever the width."""
    if activation != "auto":
        return activation, f"activation: {activation} set in the config"
    if int(d_in) == PANDERM2_WIDTH:
        return "relu_l1", (f"auto: {d_in}-d embeddings, PanDerm-2's width ({PANDERM2_WIDTH}), so PanDerm-2's "
                           "ReLU + L1 recipe")
    return "topk", (f"auto: {d_in}-d embeddings differ from PanDerm-2's {PANDERM2_WIDTH}-d ones, for which its L1 "
                    "strength was tuned; TopK sets the number of active latents (k) directly")
# Bookkeeping buffers other SAE codebases keep in their state dicts; they do not change outputs.
_IGNORED_KEYS = ("stats_last_nonzero", "latents_activation_frequency", "latents_mean_square", "num_batches_not_active",
                 "geometric_median_dataset")


class SparseAutoencoder(nn.Module):
    """ReLU (``relu_l1``) or TopK (``topk``, ``k`` latents per sample) SAE with a tied pre-encoder bias."""

    def __init__(self, d_in: int, n_latents: int, activation: str = "relu_l1", k: int | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if d_in < 1 or n_latents < 1:
            raise ConfigError(f"an SAE needs d_in >= 1 and n_latents >= 1, got {d_in} and {n_latents}")
        if activation == "topk" and (k is None or not 1 <= int(k) <= n_latents):
            raise ConfigError(f"k must be in 1..{n_latents} (n_latents) for a topk SAE, got {k}")
        self.d_in, self.n_latents, self.activation = int(d_in), int(n_latents), activation
        self.k = int(k) if k is not None else None
        self.W_enc = nn.Parameter(torch.zeros(d_in, n_latents))
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.W_dec = nn.Parameter(torch.zeros(n_latents, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    # -- the model
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``(N, n_latents)``, non-negative (TopK: at most ``k`` non-zero)."""
        pre = self.pre_activations(x)
        if self.activation == "topk":
            values, indices = torch.topk(pre, self.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
        return torch.relu(pre)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(reconstruction, activations)``."""
        z = self.encode(x)
        return self.decode(z), z

    @property
    def atoms(self) -> torch.Tensor:
        """The dictionary: one unit-norm atom per latent, ``(n_latents, d_in)``."""
        return self.W_dec.detach()

    @torch.no_grad()
    def normalize_decoder_(self) -> "SparseAutoencoder":
        """Rescale every decoder atom (row of ``W_dec``) to unit L2 norm, in place."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
        return self

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Drop the part of ``W_dec.grad`` along each atom (the step then moves atoms on the sphere)."""
        if self.W_dec.grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec.grad.sub_((self.W_dec.grad * unit).sum(dim=1, keepdim=True) * unit)

    @torch.no_grad()
    def activations(self, x, batch_size: int = 4096) -> np.ndarray:
        """``encode`` of an ``(N, d_in)`` array, batched, as float32 numpy."""
        x = _as_tensor(x, self.d_in)
        device = self.W_enc.device
        out = [self.encode(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
        return (torch.cat(out) if out else torch.zeros(0, self.n_latents)).numpy().astype(np.float32, copy=False)

    def config(self) -> dict[str, Any]:
        return {"d_in": self.d_in, "n_latents": self.n_latents, "activation": self.activation, "k": self.k}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items() if v is not None)

    # -- other layouts
    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], activation: str = "relu_l1",
                        k: int | None = None) -> "SparseAutoencoder":
        """An SAE from a state dict in dermkit's, PanDerm-2's or the ``nn.Linear`` layout (see the
        module docstring); anything else is a :class:`ModelError` naming the keys found.

        ``state`` may also be a PanDerm-2 checkpoint dict (``model_state_dict`` inside). The
        activation is not part of any of these layouts: pass ``activation``/``k``.
        """
        if not isinstance(state, Mapping):
            raise ModelError(f"an SAE state dict must be a mapping of tensors, got {type(state).__name__}")
        for wrapper in ("model_state_dict", "state_dict"):
            if wrapper in state and isinstance(state[wrapper], Mapping):
                config = state.get("model_config") or {}
                if isinstance(config, Mapping) and config.get("n_components") not in (None, 1):
                    raise ModelError(f"this SAE checkpoint was trained on {config['n_components']} components "
                                     "at once; dermkit reads single-component SAEs only")
                state = state[wrapper]
                break
        state = {str(key): (torch.as_tensor(v) if not isinstance(v, torch.Tensor) else v).detach().float().cpu()
                 for key, v in state.items() if str(key).split(".")[-1] not in _IGNORED_KEYS}
        keys = set(state)
        try:
            if {"W_enc", "b_enc", "W_dec", "b_dec"} <= keys:
                return cls._from_parts(state, {"W_enc", "b_enc", "W_dec", "b_dec"}, state["W_enc"], state["b_enc"],
                                       state["W_dec"], state["b_dec"], None, activation, k)
            tied = {"tied_bias", "pre_encoder_bias._bias_reference", "post_decoder_bias._bias_reference"} & keys
            for w, b in (("_weight", "_bias"), ("weight", "bias")):  # the vendored copy, sparse_autoencoder 1.x
                if tied and {f"encoder.{w}", f"encoder.{b}", f"decoder.{w}"} <= keys:
                    return cls._from_panderm(state, activation, k, w, b)
            if {"encoder.weight", "decoder.weight"} <= keys and ({"pre_bias", "decoder.bias"} & keys):
                enc_bias = state.get("encoder.bias", state.get("latent_bias"))
                n = state["encoder.weight"].shape[0]
                used = {"encoder.weight", "decoder.weight", "pre_bias", "decoder.bias", "encoder.bias", "latent_bias"}
                # Tied (OpenAI: pre_bias only, added back after the decoder) or untied (decoder.bias, with
                # or without a pre_bias subtracted before the encoder: none means zeros).
                b_dec = state.get("decoder.bias", state.get("pre_bias"))
                pre_bias = state.get("pre_bias", torch.zeros_like(b_dec))
                return cls._from_parts(state, used, state["encoder.weight"].T, torch.zeros(n) if enc_bias is None
                                       else enc_bias, state["decoder.weight"].T, b_dec, pre_bias, activation, k)
        except (RuntimeError, ValueError, IndexError) as exc:  # inconsistent shapes
            raise ModelError(f"the SAE state dict has inconsistent shapes ({exc}); "
                             f"found {_describe(state)}") from exc
        raise ModelError(
            "unrecognised SAE state dict layout; dermkit reads {W_enc (d, n), b_enc (n), W_dec (n, d), b_dec (d)}, "
            "PanDerm-2's {tied_bias, encoder._weight, encoder._bias, decoder._weight} and "
            "{encoder.weight, encoder.bias, decoder.weight, pre_bias}; found " + _describe(state))

    @classmethod
    def _from_panderm(cls, state, activation, k, w="_weight", b="_bias"):
        def squeeze(name, dims):
            t = state[name]
            if t.dim() == dims + 1:
                if t.shape[0] != 1:
                    raise ModelError(f"{name} has {t.shape[0]} components ({tuple(t.shape)}); dermkit reads "
                                     "single-component SAEs only")
                t = t[0]
            if t.dim() != dims:
                raise ModelError(f"{name} must have {dims} (or {dims + 1} with one component) dimensions, "
                                 f"got {tuple(t.shape)}")
            return t

        bias_keys = [b for b in ("tied_bias", "pre_encoder_bias._bias_reference", "post_decoder_bias._bias_reference")
                     if b in state]
        biases = [squeeze(b, 1) for b in bias_keys]
        if any(b.shape != biases[0].shape or not torch.equal(b, biases[0]) for b in biases[1:]):
            raise ModelError(f"{', '.join(bias_keys)} must be one tied bias; they differ")
        used = {f"encoder.{w}", f"encoder.{b}", f"decoder.{w}", *bias_keys}
        return cls._from_parts(state, used, squeeze(f"encoder.{w}", 2).T, squeeze(f"encoder.{b}", 1),
                               squeeze(f"decoder.{w}", 2).T, biases[0], None, activation, k)

    @classmethod
    def _from_parts(cls, state, used, W_enc, b_enc, W_dec, b_dec, pre_bias, activation, k):
        unknown = sorted(set(state) - set(used))
        if unknown:
            raise ModelError(f"the SAE state dict has keys dermkit does not know how to use: {unknown}; "
                             f"found {_describe(state)}")
        if W_enc.dim() != 2 or W_dec.dim() != 2 or b_enc.dim() != 1 or b_dec.dim() != 1:
            raise ModelError(f"SAE weights must be matrices and biases vectors; found {_describe(state)}")
        d, n = W_enc.shape
        if W_dec.shape != (n, d) or b_enc.shape != (n,) or b_dec.shape != (d,) or (
                pre_bias is not None and pre_bias.shape != (d,)):
            raise ModelError(f"SAE shapes do not fit together (encoder {d} -> {n} latents); found {_describe(state)}")
        if pre_bias is not None and not torch.equal(pre_bias, b_dec):
            # Untied: relu(W_e^T (x - p) + b_e) == relu(W_e^T (x - b_dec) + b_e + W_e^T (b_dec - p)).
            b_enc = b_enc + (b_dec - pre_bias) @ W_enc
        sae = cls(d, n, activation=activation, k=k)
        with torch.no_grad():
            for name, value in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
                getattr(sae, name).copy_(value)
        return sae


def _describe(state: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k} {tuple(getattr(v, 'shape', ()))}" for k, v in sorted(state.items())) + "}"


def _as_tensor(x, d_in: int | None = None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.detach().float()
    if t.dim() != 2 or (d_in is not None and t.shape[1] != d_in):
        raise ModelError(f"SAE input must be (N, {d_in if d_in is not None else 'D'}) embeddings, got {tuple(t.shape)}")
    return t


# ------------------------------------------------------------------------------ training


@dataclass
class SAETrainConfig:
    """PanDerm-2's recipe (the defaults). :func:`train_sae` reads these attributes from any object;
    ``method: sae``'s config (:class:`dermkit.methods.sae.SAEConfig`) builds on this class, so its
    keys are these."""

    activation: str = "relu_l1"
    expansion: int = 8
    k: int = 32
    l1: float = 3e-5
    lr: float = 5e-4
    batch_size: int = 4096
    epochs: int = 200
    resample_every: int = 0  # epochs; 0 = never resample dead latents
    device: str = "cpu"

    def validate(self) -> None:
        check_train_config(self)


def check_train_config(c) -> None:
    """ConfigError naming the key for an unusable SAE training setting."""
    if c.activation not in (*ACTIVATIONS, "auto"):
        raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)} or auto, got {c.activation!r}")
    if c.expansion < 1:
        raise ConfigError(f"expansion must be >= 1 (latents per embedding dimension), got {c.expansion}")
    if c.activation in ("topk", "auto") and c.k < 1:
        raise ConfigError(f"k must be >= 1 (active latents per sample), got {c.k}")
    if c.l1 < 0:
        raise ConfigError(f"l1 must be >= 0, got {c.l1}")
    if not c.lr > 0:
        raise ConfigError(f"lr must be > 0, got {c.lr}")
    if c.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {c.batch_size}")
    if c.epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {c.epochs}")
    if getattr(c, "resample_every", 0) < 0:
        raise ConfigError(f"resample_every must be >= 0 (epochs; 0 = never), got {c.resample_every}")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device must be cpu, cuda, cuda:N or auto, got {name!r}") from exc


def train_sae(x: np.ndarray, config: Any = None, seed: int = 0, progress: bool | Callable = False,
              init: SparseAutoencoder | None = None) -> tuple[SparseAutoencoder, list[dict]]:
    """Train an SAE on embeddings ``x`` ``(N, d_in)``; returns ``(sae, history)`` (one dict per epoch).

    Minibatch Adam over shuffled epochs (a ``torch.Generator`` seeded with ``seed`` draws the
    initialisation and every permutation, so a seed gives the same SAE). Initialisation:
    ``W_dec`` rows are random unit vectors, ``b_dec`` = the data mean, ``b_enc = 0`` and
    ``W_enc = s W_dec^T`` with ``s`` the least-squares scale of the first reconstruction of the
    centred data (so training starts at FVU <= 1 whatever the number of latents). Each step:
    loss = mean over the batch of [mean squared error over features + ``l1`` x sum of latents]
    (``topk``: MSE only; ``auto``: see :func:`resolve_activation`), the gradient along each decoder
    atom is removed, Adam steps, atoms are renormalised to unit norm. With ``resample_every`` = E > 0,
    latents that stayed inactive over the last E epochs are re-initialised every E epochs
    (not in the last fifth of training) towards inputs the SAE reconstructs worst (Anthropic's
    recipe, simplified), and their Adam moments are zeroed. ``init`` continues training a given SAE.
    ``progress``: True prints one line per tenth of training; a callable gets each epoch's dict.
    """
    c = config if config is not None else SAETrainConfig()
    c = SAETrainConfig(**{f: getattr(c, f, getattr(SAETrainConfig, f)) for f in SAETrainConfig.__dataclass_fields__}) \
        if not isinstance(c, Mapping) else SAETrainConfig(**c)
    check_train_config(c)
    x_t = _as_tensor(x)
    n, d = x_t.shape
    if n == 0:
        raise ModelError("no embeddings to train the SAE on")
    device = _device(c.device)
    gen = torch.Generator().manual_seed(int(seed))
    if init is not None:
        if init.d_in != d:
            raise ModelError(f"the initial SAE reads {init.d_in}-D embeddings, these are {d}-D")
        sae = init.to(device)
    else:
        activation, _ = resolve_activation(c.activation, d)
        n_latents = d * int(c.expansion)
        if activation == "topk" and c.k > n_latents:
            raise ConfigError(f"k ({c.k}) must be <= the number of latents ({n_latents} = {d} x expansion "
                              f"{c.expansion})")
        sae = SparseAutoencoder(d, n_latents, activation, c.k if activation == "topk" else None)
        with torch.no_grad():
            atoms = torch.randn(sae.n_latents, d, generator=gen)
            sae.W_dec.copy_(atoms)
            sae.normalize_decoder_()
            sae.b_dec.copy_(x_t.mean(dim=0))
            # W_enc = s * W_dec^T, s the least-squares scale of the first reconstruction (on up to
            # 4096 rows): with thousands of latents an unscaled transpose over-shoots x many times.
            sample = x_t[torch.randperm(n, generator=gen)[:4096]] - sae.b_dec
            recon = torch.relu(sample @ sae.W_dec.T) @ sae.W_dec
            denom = float(recon.pow(2).sum())
            scale = float((sample * recon).sum()) / denom if denom > 0 else 1.0
            sae.W_enc.copy_(sae.W_dec.T * (scale if scale > 0 else 1.0))
        sae = sae.to(device)
    l1 = float(c.l1) if sae.activation == "relu_l1" else 0.0
    opt = torch.optim.Adam(sae.parameters(), lr=float(c.lr), betas=(0.9, 0.999), eps=1e-8)
    x_dev = x_t.to(device)
    batch = min(int(c.batch_size), n)
    history: list[dict] = []
    fired = torch.zeros(sae.n_latents, dtype=torch.bool, device=device)
    report_every = max(1, c.epochs // 10)
    sae.train()
    for epoch in range(int(c.epochs)):
        order = torch.randperm(n, generator=gen).to(device)
        sums = {"loss": 0.0, "mse": 0.0, "l1": 0.0, "l0": 0.0}
        for start in range(0, n, batch):
            xb = x_dev[order[start:start + batch]]
            recon, z = sae(xb)
            mse = (recon - xb).pow(2).mean(dim=1).mean()
            sparsity = z.sum(dim=1).mean()  # z >= 0, so this is the L1 norm
            loss = mse + l1 * sparsity
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_parallel_decoder_grad_()
            opt.step()
            sae.normalize_decoder_()
            with torch.no_grad():
                active = z > 0
                fired |= active.any(dim=0)
                w = len(xb)
                sums["loss"] += float(loss) * w
                sums["mse"] += float(mse) * w
                sums["l1"] += float(sparsity) * w
                sums["l0"] += float(active.sum())
        row = {"epoch": epoch + 1, **{k: v / n for k, v in sums.items()}}
        if c.resample_every and (epoch + 1) % c.resample_every == 0 and epoch + 1 <= 0.8 * c.epochs:
            row["resampled"] = _resample_dead(sae, opt, x_dev, ~fired, gen)
            fired.zero_()
        elif c.resample_every and (epoch + 1) % c.resample_every == 0:
            fired.zero_()
        history.append(row)
        if callable(progress):
            progress(row)
        elif progress and ((epoch + 1) % report_every == 0 or epoch + 1 == c.epochs):
            print(f"SAE epoch {epoch + 1}/{c.epochs}: loss {row['loss']:.5g}, mse {row['mse']:.5g}, "
                  f"L0 {row['l0']:.1f}", flush=True)
    sae.eval()
    return sae.cpu(), history


@torch.no_grad()
def _resample_dead(sae: SparseAutoencoder, opt, x: torch.Tensor, dead: torch.Tensor, gen) -> int:
    idx = torch.nonzero(dead).flatten()
    if len(idx) == 0:
        return 0
    errors = torch.cat([(sae(x[i:i + 4096])[0] - x[i:i + 4096]).pow(2).sum(dim=1) for i in range(0, len(x), 4096)])
    if float(errors.sum()) <= 0:
        return 0
    picks = torch.multinomial(errors.cpu() / errors.sum().cpu(), len(idx), replacement=len(idx) > len(x),
                              generator=gen).to(x.device)
    directions = x[picks] - sae.b_dec
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive = ~dead
    scale = float(sae.W_enc[:, alive].norm(dim=0).mean()) if bool(alive.any()) else 1.0
    sae.W_dec[idx] = directions
    sae.W_enc[:, idx] = directions.T * 0.2 * scale
    sae.b_enc[idx] = 0.0
    for p, sl in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
        state = opt.state.get(p)
        if state:
            state["exp_avg"][sl] = 0.0
            state["exp_avg_sq"][sl] = 0.0
    return int(len(idx))


# ------------------------------------------------------------------------------ metrics


@torch.no_grad()
def sae_metrics(sae: SparseAutoencoder, x, batch_size: int = 4096) -> dict[str, Any]:
    """Reconstruction and sparsity of ``sae`` on embeddings ``x`` ``(N, d_in)``.

    ``fvu``: fraction of variance unexplained, sum ||x - x_hat||^2 / sum ||x - mean(x)||^2;
    ``mse``: mean squared error per feature; ``mean_l0``: active (> 0) latents per sample;
    ``dead``: latents never active on ``x`` (``dead_fraction`` of ``n_latents``).
    """
    x_t = _as_tensor(x, sae.d_in)
    n = len(x_t)
    device = sae.W_enc.device
    sq_err, l0 = 0.0, 0.0
    ever = torch.zeros(sae.n_latents, dtype=torch.bool)
    for i in range(0, n, batch_size):
        xb = x_t[i:i + batch_size].to(device)
        recon, z = sae(xb)
        sq_err += float((recon - xb).double().pow(2).sum())
        active = (z > 0).cpu()
        l0 += float(active.sum())
        ever |= active.any(dim=0)
    x64 = x_t.double()
    total = float((x64 - x64.mean(dim=0)).pow(2).sum()) if n else 0.0
    dead = int(sae.n_latents - int(ever.sum()))
    return {"n": int(n), "n_latents": sae.n_latents, "fvu": sq_err / total if total > 0 else math.nan,
            "mse": sq_err / (n * sae.d_in) if n else math.nan, "mean_l0": l0 / n if n else math.nan,
            "dead": dead, "dead_fraction": dead / sae.n_latents}
