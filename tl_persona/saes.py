"""Anything SAE-shaped: SAE-Lens ``SAE`` objects of any architecture, as they are, or plain weights.

tl_persona never wraps SAE-Lens SAEs in a parallel hierarchy: every function takes an ``SAE``
(Standard, TopK, JumpReLU, Gated, ...) and uses its own ``encode``/``decode``, so normalisation and
architecture details stay SAE-Lens' business. Users with their own dictionaries turn plain weights
into a real SAE-Lens SAE with :func:`sae_from_weights`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_persona.models import as_adapter, check_width
from tl_persona.provenance import sae_identity
from tl_persona.validate import BadInput, finite_tensor, latent_indices

__all__ = [
    "is_sae",
    "SAEEncoder",
    "named_saes",
    "sae_from_weights",
    "sae_hook_name",
    "check_sae",
    "decoder_directions",
    "latent_direction",
    "encode",
    "decode",
    "reconstruction_quality",
    "Quality",
]


def is_sae(obj: Any) -> bool:
    """True for a SAE-Lens SAE (or anything shaped like one: a ``.cfg`` with ``d_in`` and ``d_sae``);
    False for engine encoders, models and collections of SAEs. The one test of "is it an SAE"."""
    cfg = getattr(obj, "cfg", None)
    return cfg is not None and hasattr(cfg, "d_in") and hasattr(cfg, "d_sae")


def _cfg(sae: Any) -> Any:
    if not is_sae(sae):
        raise BadInput(
            f"expected a SAE-Lens SAE (with .cfg.d_in and .cfg.d_sae), got {type(sae).__name__}; "
            "load one with SAE.from_pretrained(...)/SAE.load_from_disk(...) or build one from "
            "plain weights with tl_persona.saes.sae_from_weights(...)"
        )
    return sae.cfg


def d_in(sae: Any) -> int:
    """Input width of the SAE."""
    return int(_cfg(sae).d_in)


def d_sae(sae: Any) -> int:
    """Number of latents of the SAE."""
    return int(_cfg(sae).d_sae)


def sae_hook_name(sae: Any, hook_name: str | None = None) -> str:
    """The hook point the SAE reads: ``hook_name`` if given, else the one stored in its metadata."""
    if hook_name is not None:
        return hook_name
    meta = getattr(_cfg(sae), "metadata", None)
    name = getattr(meta, "hook_name", None) if meta is not None else None
    if not name:
        raise BadInput(
            "this SAE does not record its hook point (cfg.metadata.hook_name is empty); pass "
            "hook_name='blocks.L.hook_resid_pre' (the point it was trained on) explicitly"
        )
    return str(name)


def encode(sae: Any, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
    """Latent activations of ``x`` (cast to the SAE's dtype and device, returned in x's dtype)."""
    p = sae.W_dec
    return sae.encode(x.to(device=p.device, dtype=p.dtype)).to(x.dtype)


def decode(sae: Any, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
    """Reconstruction from latent activations (returned in f's dtype)."""
    p = sae.W_dec
    return sae.decode(f.to(device=p.device, dtype=p.dtype)).to(f.dtype)


class SAEEncoder:
    """An SAE as an encoder of the streaming engine (:class:`tl_persona.engine.Encoder`).

    Reads ``hook_name`` (default: the hook in the SAE's metadata), encodes with the SAE's own
    ``encode`` in its dtype and on its device; ``dtype`` casts a copy of the SAE for the encode.
    The SAE's weights are checked finite here, so a NaN in ``W_enc`` fails at once instead of
    ranking latents as if nothing were wrong.

    ``offload_to``: keep the SAE where it is (e.g. on the CPU) and move it to this device only for
    each batch's encode, and back: seven 131k-latent SAEs then need the device memory of one, at the
    cost of one transfer per SAE and batch (a 1.9 GB bfloat16 SAE takes about 0.1 s over PCIe 4).
    """

    def __init__(self, sae: Any, hook_name: str | None = None, dtype: torch.dtype | None = None,
                 offload_to: torch.device | str | None = None) -> None:
        check_finite_weights(sae)
        self.source = sae
        self.sae = sae if dtype is None or sae.W_dec.dtype == dtype else copy.deepcopy(sae).to(dtype=dtype)
        self.hook_name = sae_hook_name(sae, hook_name)
        self.d_in = d_in(sae)
        self.n_features = d_sae(sae)
        self.offload_to = torch.device(offload_to) if offload_to is not None else None

    @property
    def device(self) -> torch.device:
        """Where the encode runs: ``offload_to`` when given, else where the SAE's weights live."""
        return self.offload_to if self.offload_to is not None else self.sae.W_dec.device

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """The SAE on :attr:`device` for the body (moved there and back when offloaded)."""
        if self.offload_to is None or self.sae.W_dec.device == self.offload_to:
            yield
            return
        home = self.sae.W_dec.device
        self.sae.to(self.offload_to)
        try:
            yield
        finally:
            self.sae.to(home)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the SAE encodes in."""
        return self.sae.W_dec.dtype

    def encode(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_sae"]:
        """Latent activations of ``x`` (moved to the SAE's device and dtype)."""
        p = self.sae.W_dec
        return self.sae.encode(x.to(device=p.device, dtype=p.dtype))

    def identity(self) -> dict[str, Any]:
        """Provenance of the SAE (:func:`tl_persona.provenance.sae_identity`)."""
        return sae_identity(self.source, self.hook_name)

    def __repr__(self) -> str:
        return f"SAEEncoder({type(self.source).__name__}, hook={self.hook_name!r}, d_sae={self.n_features})"


def named_saes(sae: Any) -> dict[str, Any] | None:
    """Several SAEs by name, or None for a single one: a mapping keeps its names; a list or tuple is
    named by hook (plus ``#i`` when two read one hook). The one rule behind multi-SAE diffing and
    verification."""
    if not isinstance(sae, (Mapping, list, tuple)):
        return None
    items = list(sae.items()) if isinstance(sae, Mapping) else [(None, v) for v in sae]
    if not items:
        raise BadInput("sae is an empty collection; pass at least one SAE")
    hooks = [sae_hook_name(v) if is_sae(v) else getattr(v, "hook_name", None) for _, v in items]
    keys = [str(k) if k is not None else (h if hooks.count(h) == 1 else f"{h}#{i}")
            for i, ((k, _), h) in enumerate(zip(items, hooks))]
    if len(set(keys)) != len(keys):
        raise BadInput(f"two SAEs share the name {next(k for k in keys if keys.count(k) > 1)!r}; give each its own")
    return dict(zip(keys, (v for _, v in items)))


def check_finite_weights(sae: Any) -> None:
    """Raise naming the tensor when an SAE's weights hold NaN or infinity."""
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        t = getattr(sae, name, None)
        if isinstance(t, Tensor):
            finite_tensor(t, f"the SAE's {name}", fix="the SAE's weights are corrupt (reload or retrain it)")


def decoder_directions(sae: Any, latents: int | Sequence[int] | Tensor) -> Float[Tensor, "n d_in"]:
    """Rows of ``W_dec`` for the given latents (a single index gives a ``[1, d_in]`` tensor)."""
    idx = check_latents(sae, latents)
    return sae.W_dec.detach()[idx]


def latent_direction(sae: Any, latents: int | Sequence[int] | Tensor) -> Float[Tensor, " d_in"]:
    """The direction to steer along for latents: one latent's ``W_dec`` row as stored; for several,
    the sum of their unit decoder rows rescaled to unit norm."""
    rows = decoder_directions(sae, latents).float()
    if rows.shape[0] == 1:
        return rows[0]
    s = (rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)).sum(0)
    return s / s.norm().clamp_min(1e-12)


def check_latents(sae: Any, latents: int | Sequence[int] | Tensor, name: str = "latents") -> Int[Tensor, " n"]:
    """Latent indices as a 1-D long tensor, each an int (not a bool or float) in ``[0, d_sae)``."""
    return latent_indices(latents, name, d_sae(sae))


def check_sae(model: Any, sae: Any, hook_name: str | None = None) -> str:
    """Check that ``sae`` fits ``model`` at its hook point and return the hook name.

    Raises a clear error when the hook does not exist or when the activation width there differs
    from the SAE's ``d_in``. The SAE's reconstruction quality is a separate, data-dependent check:
    :func:`reconstruction_quality`.
    """
    adapter = as_adapter(model)
    name = adapter.check_hook(sae_hook_name(sae, hook_name))
    check_width("SAE", d_in(sae), adapter.width_at(name), name, adapter.name)
    return name


@dataclass(frozen=True)
class Quality:
    """How well an SAE reconstructs a model's activations on some tokens.

    ``fvu`` is the fraction of variance unexplained (0 is perfect), ``explained_variance`` = 1 - fvu,
    ``l0`` the mean number of active latents per token, ``dead_fraction`` the share of latents that
    never fired on these tokens, ``n_tokens`` how many tokens were measured.
    """

    fvu: float
    explained_variance: float
    l0: float
    dead_fraction: float
    n_tokens: int


def reconstruction_quality(
    model: Any,
    sae: Any,
    tokens: Int[Tensor, "batch pos"],
    hook_name: str | None = None,
    attention_mask: Tensor | None = None,
    warn_fvu: float = 0.5,
) -> Quality:
    """Measure the SAE's reconstruction on ``tokens`` and warn when it is poor.

    Why: an SAE must see the residual stream it was trained on; a model loaded with the wrong
    weight processing (folded LayerNorm vs raw Hugging Face) or a misread architecture shows up
    here as a high FVU or an L0 far from the trained one. BOS positions are excluded (their norm
    is atypical) and so is padding when ``attention_mask`` is given.
    """
    adapter = as_adapter(model)
    name = check_sae(adapter, sae, hook_name)
    acts = adapter.run_to_hook(tokens.to(adapter.device), name)
    keep = torch.ones(acts.shape[:2], dtype=torch.bool, device=acts.device)
    if attention_mask is not None:
        keep &= attention_mask.to(acts.device).bool()
    if adapter.prepends_bos:
        keep[:, 0] = False
    x = acts[keep].float()
    if x.shape[0] == 0:
        raise BadInput("no tokens left to measure after excluding BOS and padding; pass longer prompts")
    with torch.no_grad():
        f = encode(sae, x)
        x_hat = decode(sae, f)
    resid = ((x - x_hat) ** 2).sum()
    total = ((x - x.mean(0)) ** 2).sum().clamp_min(1e-12)
    fvu = float(resid / total)
    q = Quality(
        fvu=fvu,
        explained_variance=1.0 - fvu,
        l0=float((f != 0).sum(-1).float().mean()),
        dead_fraction=float(((f != 0).sum(0) == 0).float().mean()),
        n_tokens=int(x.shape[0]),
    )
    if not math.isfinite(fvu) or fvu > warn_fvu:
        warnings.warn(
            f"SAE reconstructs {name!r} of {adapter.name!r} poorly: FVU={fvu:.3f}, L0={q.l0:.1f}. "
            "Check that the model's weight processing matches the SAE's training (e.g. "
            "from_pretrained_no_processing for SAEs trained on raw Hugging Face residuals) and that "
            "the SAE architecture loaded as trained.",
            stacklevel=2,
        )
    return q


def sae_from_weights(
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, " d_in"],
    activation: Literal["relu", "topk", "jumprelu"] = "relu",
    *,
    k: int | None = None,
    threshold: Float[Tensor, " d_sae"] | None = None,
    hook_name: str | None = None,
    subtract_b_dec: bool = False,
) -> Any:
    """Build a SAE-Lens SAE from plain weights, for users with their own dictionaries.

    The encoder computes ``act(x @ W_enc + b_enc)`` (or ``act((x - b_dec) @ W_enc + b_enc)`` with
    ``subtract_b_dec``); the decoder ``f @ W_dec + b_dec``. ``activation`` picks ReLU, TopK (needs
    ``k``) or JumpReLU (needs ``threshold``). The result is a real ``sae_lens`` SAE, so every
    tl_persona function (and SAE-Lens itself) accepts it.
    """
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    W_enc, b_enc, W_dec, b_dec = (torch.as_tensor(t).detach() for t in (W_enc, b_enc, W_dec, b_dec))
    if W_enc.ndim != 2 or W_dec.ndim != 2:
        raise BadInput(f"W_enc and W_dec must be 2-D, got shapes {tuple(W_enc.shape)} and {tuple(W_dec.shape)}")
    n_in, n_sae = W_enc.shape
    expect = {"W_dec": (n_sae, n_in), "b_enc": (n_sae,), "b_dec": (n_in,)}
    for nm, t in (("W_dec", W_dec), ("b_enc", b_enc), ("b_dec", b_dec)):
        if tuple(t.shape) != expect[nm]:
            raise BadInput(
                f"{nm} has shape {tuple(t.shape)} but W_enc {tuple(W_enc.shape)} implies {expect[nm]} "
                "(W_enc is [d_in, d_sae], W_dec is [d_sae, d_in])"
            )
    common = dict(d_in=n_in, d_sae=n_sae, dtype=str(W_enc.dtype).removeprefix("torch."), apply_b_dec_to_input=subtract_b_dec)
    if activation == "relu":
        sae = StandardSAE(StandardSAEConfig(**common))
    elif activation == "topk":
        if k is None or not 0 < int(k) <= n_sae:
            raise BadInput(f"activation='topk' needs k in 1..{n_sae}, got k={k!r}")
        sae = TopKSAE(TopKSAEConfig(**common, k=int(k)))
    elif activation == "jumprelu":
        if threshold is None:
            raise BadInput("activation='jumprelu' needs threshold=<tensor of shape [d_sae]>")
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
    else:
        raise BadInput(f"activation={activation!r} is not one of 'relu', 'topk', 'jumprelu'")
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
        if activation == "jumprelu":
            thr = torch.as_tensor(threshold).detach()
            if tuple(thr.shape) != (n_sae,):
                raise BadInput(f"threshold has shape {tuple(thr.shape)}, expected ({n_sae},)")
            sae.threshold.copy_(thr)
    if hook_name is not None:
        sae.cfg.metadata.hook_name = hook_name
    return sae.eval()
