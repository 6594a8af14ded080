"""Hook builders: capture, splice, steer, ablate, clamp, cap and project out, as plain TransformerLens hooks.

Every builder returns a ``fwd_hooks`` list ``[(hook_name, fn)]`` with ``fn(activation, hook) ->
activation``: pass it to ``model.run_with_hooks(..., fwd_hooks=...)``, ``with model.hooks(...)``,
``model.generate`` under hooks, or :func:`apply`, and mix it with your own hooks at the same point.
No builder touches the model.

Two rules make the results trustworthy:

* **Edits survive the error term.** Latent edits are applied as ``x + decode(f') - decode(f)``, so
  the SAE's reconstruction error stays in the stream and a no-op edit returns ``x``.
* **Positions are explicit and absolute.** Each hook selects positions with :class:`Positions`
  (all, prompt, generated, last prompt token, or an explicit mask); BOS is excluded unless asked
  for. Under a KV cache (``generate``), the first forward sees the whole prompt and later ones one
  token each; the hook keeps the absolute offset, so "prompt" and "generated" stay right.
"""

from __future__ import annotations

import contextvars
import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Sequence, Union

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_persona.models import as_adapter
from tl_persona.saes import check_latents, d_in, decode, encode, latent_direction, sae_hook_name
from tl_persona.tokens import check_selection, select
from tl_persona.validate import BadInput, finite_tensor

__all__ = [
    "Positions",
    "Hook",
    "FwdHooks",
    "LatentStore",
    "capture_latents",
    "capture_acts",
    "splice",
    "steer",
    "steer_latent",
    "ablate",
    "clamp",
    "cap",
    "project_out",
    "apply",
    "HookReport",
    "hooks_attached",
]

PositionKind = Literal["all", "prompt", "response", "generated", "last_prompt", "mask"]
FwdHooks = list[tuple[str, Callable[[Tensor, Any], Tensor]]]
"""A TransformerLens ``fwd_hooks`` list: ``[(hook_name, fn(activation, hook) -> activation)]``."""


# --------------------------------------------------------------------------- positions
@dataclass(frozen=True, eq=False)
class _Padding:
    """The per-row left padding of the batch now running (see :meth:`Positions.left_padded`)."""

    left: Tensor  # [batch] long, on CPU


_PADDING: contextvars.ContextVar[_Padding | None] = contextvars.ContextVar("tl_persona_left_padding", default=None)


@dataclass(frozen=True, eq=False)
class Positions:
    """Which token positions a hook acts on, in absolute positions of each row's own sequence.

    ``which``: a token selection of :mod:`tl_persona.tokens` (``"all"``, ``"prompt"``: the
    positions of the first forward chunk, i.e. the prompt under ``generate``; ``"response"``, also
    called ``"generated"``: the positions after it; ``"last_prompt"``: the last prompt token) or
    ``"mask"`` (exactly the True entries of ``mask``).
    ``mask``: optional ``[batch, pos]`` bool tensor. With ``which="mask"`` it is the selection;
    otherwise it marks the valid prompt tokens (False on padding and BOS), e.g.
    ``batch.attention_mask & ~batch.bos_mask``, and positions beyond its width count as valid; each
    row's prompt then ends after its last valid token.
    ``include_bos``: without a mask, position 0 of each row (where TransformerLens puts BOS) is
    excluded unless this is True (set it for models that prepend no BOS).

    **Positions under left padding.** Position ``j`` of row ``i`` is the row's ``j``-th token, the
    position it has when the prompt runs alone. With right padding (``ModelAdapter.to_tokens``) that
    is the column index. A batch whose rows are *left*-padded (as :func:`tl_persona.evals.generate.sample`
    runs them: row ``i``'s tokens start at column ``pad[i]``) is declared with
    ``with Positions.left_padded(pad): ...``; inside it, hooks translate column ``c`` of row ``i`` to
    position ``c - pad[i]``: the padding columns are never selected, BOS (position 0) sits at column
    ``pad[i]``, a mask's column ``j`` still means the row's ``j``-th token (build it as for the
    prompt alone), and the first forward chunk inside each ``left_padded`` block starts a new
    sequence (so a one-token prompt is not mistaken for a KV-cache step of the previous batch).
    Outside any such block there is no padding offset, as before.
    """

    which: PositionKind = "all"
    mask: Bool[Tensor, "batch pos"] | None = None
    include_bos: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "which", check_selection(self.which, "positions", extra=("mask",)))
        if self.which == "mask" and self.mask is None:
            raise BadInput("positions 'mask' needs mask=<[batch, pos] bool tensor>")
        if self.mask is not None:
            m = self.mask
            if not isinstance(m, Tensor) or m.ndim != 2 or m.dtype != torch.bool:
                raise BadInput(
                    f"a position mask must be a 2-D bool tensor [batch, pos], got "
                    f"{getattr(m, 'dtype', type(m).__name__)} of shape {tuple(getattr(m, 'shape', ()))}"
                )
            if not bool(m.any()):
                raise BadInput(
                    "the position mask selects no position; check it (e.g. all padding) or use "
                    "positions='all'"
                )
            if self.which == "last_prompt" and not bool(m.any(-1).all()):
                row = int((~m.any(-1)).nonzero()[0])
                raise BadInput(f"positions='last_prompt': mask row {row} has no valid token")

    @staticmethod
    def of(spec: "PositionsLike") -> "Positions":
        """Coerce a string, a bool mask tensor or a :class:`Positions` into :class:`Positions`."""
        if isinstance(spec, Positions):
            return spec
        if isinstance(spec, Tensor):
            return Positions("mask", spec)
        if isinstance(spec, str):
            return Positions(spec)  # type: ignore[arg-type]
        raise BadInput(f"positions={spec!r:.60} must be a string, a bool tensor or a Positions")

    @staticmethod
    @contextmanager
    def left_padded(pad: Tensor | Sequence[int]) -> Iterator[Tensor]:
        """Declare that the forward passes in the body run left-padded rows: row ``i``'s real tokens
        start at column ``pad[i]`` (its number of padding columns). Yields ``pad`` as a LongTensor.

        Every tl_persona hook reads it (see the class docstring); a plain hook of your own can read
        it with :meth:`current_left_pad`. Blocks nest; leaving one restores the outer setting, also on
        an exception. The padding of each block is a new batch: hook position state starts afresh.
        """
        left = torch.as_tensor(pad).detach().to("cpu", torch.long).flatten()
        if left.numel() == 0 or bool((left < 0).any()):
            raise BadInput(f"left padding must be one count >= 0 per row, got {pad!r:.80}")
        token = _PADDING.set(_Padding(left))
        try:
            yield left
        finally:
            _PADDING.reset(token)

    @staticmethod
    def current_left_pad() -> Tensor | None:
        """The per-row left padding declared by the innermost :meth:`left_padded` block, or None."""
        p = _PADDING.get()
        return None if p is None else p.left


PositionsLike = Union[Positions, str, Tensor]


class _Tracker:
    """Position bookkeeping for one hook across the chunks of a KV-cached generation.

    Keeps the absolute column of each chunk (the first chunk is the prompt, later one-token chunks
    continue it) and, under :meth:`Positions.left_padded`, each row's padding offset, so that a
    selection names the same real tokens whatever the batch's padding.
    """

    def __init__(self, spec: Positions) -> None:
        self.spec = spec
        self.reset()

    def reset(self) -> None:
        self.batch: int | None = None
        self.prompt_len: Tensor | int = 0
        self.next = 0
        self.padding: _Padding | None = None
        self._mask: Tensor | None = None
        self._left: Tensor | None = None

    def select(self, B: int, T: int, device: torch.device) -> Bool[Tensor, "batch pos"] | None:
        """Bool mask of the selected positions in this chunk, or None when every position is."""
        s = self.spec
        padding = _PADDING.get()
        if padding is not None and padding.left.numel() != B:
            raise BadInput(
                f"the left padding declared with Positions.left_padded has {padding.left.numel()} rows but "
                f"the activation has batch {B}"
            )
        # A chunk of one token right after earlier chunks of the same batch (and padding block)
        # continues them (KV cache); anything else starts a new sequence at column 0.
        if T == 1 and self.batch == B and self.next > 0 and self.padding is padding:
            offset = self.next
            mask, left = self._mask, self._left
        else:
            offset, self.batch, self.padding = 0, B, padding
            left = self._left = padding.left.to(device) if padding is not None else None
            mask = s.mask.to(device) if s.mask is not None else None
            if mask is not None and mask.shape[0] != B:
                raise BadInput(
                    f"position mask has batch {mask.shape[0]} but the activation has batch {B}; build the "
                    "mask from the same tokens you run"
                )
            self._mask = mask
            self.prompt_len = T
            if mask is not None and s.which != "mask":  # each row's prompt ends after its last valid token
                W = mask.shape[1]
                idx = torch.arange(W, device=device)
                rows_len = T if left is None else (T - left).view(-1, 1)
                last = torch.where(mask & (idx < rows_len), idx + 1, torch.zeros_like(idx)).amax(-1)
                self.prompt_len = last if left is None else last + left
        self.next = offset + T
        pos = torch.arange(offset, offset + T, device=device)
        if left is None and mask is None:  # no per-row work
            valid = ((pos != 0) | s.include_bos).expand(B, T)
            out = select(s.which, valid, self.prompt_len, offset)
            return None if s.which == "all" and bool(out.all()) else out
        # each row's own positions: column minus its padding
        rel = pos.expand(B, T) if left is None else pos[None, :] - left[:, None]
        if mask is not None:
            W = mask.shape[1]
            inside = (rel >= 0) & (rel < W)
            picked = torch.gather(mask, 1, rel.clamp(0, W - 1)) & inside
            if s.which == "mask":
                return picked
            valid = picked | (rel >= W)
        else:
            valid = (rel >= 0) & ((rel != 0) | s.include_bos)
        out = select(s.which, valid, self.prompt_len, offset)
        return None if s.which == "all" and bool(out.all()) else out


# --------------------------------------------------------------------------- hook objects
class Hook:
    """Base of tl_persona's hook functions: a callable ``fn(activation, hook) -> activation`` that
    counts its calls (``.calls``) and selects positions. Subclasses implement :meth:`edit`."""

    kind = "hook"

    def __init__(self, positions: PositionsLike = "all") -> None:
        self.positions = Positions.of(positions)
        self._tracker = _Tracker(self.positions)
        self.calls = 0

    def reset(self) -> None:
        """Forget position state and the call count (done by :func:`apply` on entry)."""
        self._tracker.reset()
        self.calls = 0

    def __call__(self, activation: Tensor, hook: Any = None) -> Tensor:
        self.calls += 1
        if activation.ndim != 3:
            raise BadInput(
                f"{self.kind} hook expects a [batch, pos, d] activation, got shape {tuple(activation.shape)} "
                f"at {getattr(hook, 'name', '?')!r}; attach it to a residual-stream hook point"
            )
        sel = self._tracker.select(activation.shape[0], activation.shape[1], activation.device)
        return self.edit(activation, sel)

    def edit(self, x: Float[Tensor, "batch pos d"], sel: Bool[Tensor, "batch pos"] | None) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"tl_persona.{type(self).__name__}(positions={self.positions.which!r})"


def _on_selected(x: Tensor, sel: Tensor | None, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply ``fn`` to the ``[n, d]`` rows of x at the selected positions; others are untouched."""
    if sel is None:
        return fn(x.reshape(-1, x.shape[-1])).reshape(x.shape)
    if not bool(sel.any()):
        return x
    out = x.clone()
    out[sel] = fn(x[sel])
    return out


# --------------------------------------------------------------------------- capture
@dataclass
class LatentStore:
    """A simple sink for :func:`capture_latents`: keeps every captured chunk (detached, on CPU).

    ``latents`` is ``[n, d_sae]`` over all captured positions, ``index`` the matching
    ``[n, 2]`` (batch row, absolute position). Use your own callable for streaming statistics.
    """

    chunks: list[Tensor] = field(default_factory=list)
    where: list[Tensor] = field(default_factory=list)

    def __call__(self, latents: Tensor, index: Tensor) -> None:
        self.chunks.append(latents.detach().cpu())
        self.where.append(index.detach().cpu())

    @property
    def latents(self) -> Float[Tensor, "n d_sae"]:
        if not self.chunks:
            raise BadInput("nothing was captured yet: run the model with the capture hooks first")
        return torch.cat(self.chunks)

    @property
    def index(self) -> Int[Tensor, "n 2"]:
        return torch.cat(self.where)


class _Capture(Hook):
    kind = "capture"

    def __init__(self, sink: Callable[[Tensor, Tensor], None], sae: Any | None, positions: PositionsLike) -> None:
        super().__init__(positions)
        self.sink, self.sae = sink, sae

    def __call__(self, activation: Tensor, hook: Any = None) -> Tensor:
        self.calls += 1
        B, T = activation.shape[:2]
        sel = self._tracker.select(B, T, activation.device)
        offset = self._tracker.next - T
        if sel is None:
            sel = torch.ones(B, T, dtype=torch.bool, device=activation.device)
        idx = sel.nonzero()
        idx[:, 1] += offset
        with torch.no_grad():
            x = activation[sel].detach()
            self.sink(encode(self.sae, x) if self.sae is not None else x, idx)
        return activation  # the very same tensor: capture is read-only


def capture_latents(
    sae: Any,
    sink: Callable[[Float[Tensor, "n d_sae"], Int[Tensor, "n 2"]], None],
    *,
    hook_name: str | None = None,
    positions: PositionsLike = "all",
) -> FwdHooks:
    """Read-only hook that encodes the selected positions with ``sae`` and hands them to ``sink``.

    ``sink(latents [n, d_sae], index [n, 2])`` gets the latents of the selected positions and their
    (batch row, absolute position). The activation passes through untouched, so the model's output
    is bit-identical. :class:`LatentStore` is a ready sink.
    """
    return [(sae_hook_name(sae, hook_name), _Capture(sink, sae, positions))]


def capture_acts(
    hook_name: str,
    sink: Callable[[Float[Tensor, "n d"], Int[Tensor, "n 2"]], None],
    *,
    positions: PositionsLike = "all",
) -> FwdHooks:
    """Read-only hook that hands the raw activations at the selected positions to ``sink``."""
    return [(hook_name, _Capture(sink, None, positions))]


# --------------------------------------------------------------------------- splice
class _Splice(Hook):
    kind = "splice"

    def __init__(self, sae: Any, keep_error: bool, positions: PositionsLike) -> None:
        super().__init__(positions)
        self.sae, self.keep_error = sae, keep_error

    def edit(self, x: Tensor, sel: Tensor | None) -> Tensor:
        def f(rows: Tensor) -> Tensor:
            x_hat = decode(self.sae, encode(self.sae, rows))
            return x_hat + (rows - x_hat).detach() if self.keep_error else x_hat

        return _on_selected(x, sel, f)


def splice(
    sae: Any, *, keep_error: bool = True, hook_name: str | None = None, positions: PositionsLike = "all"
) -> FwdHooks:
    """Replace the activation by the SAE's reconstruction at the selected positions.

    With ``keep_error`` (default) the reconstruction error is added back (detached), so the forward
    output is unchanged while gradients flow through the SAE latents; without it the model runs on
    the bare reconstruction (what "SAE spliced in" usually means for loss-recovered metrics).
    """
    return [(sae_hook_name(sae, hook_name), _Splice(sae, keep_error, positions))]


# --------------------------------------------------------------------------- steer
class _Steer(Hook):
    kind = "steer"

    def __init__(self, direction: Tensor, alpha: Tensor, norm_scaled: bool, positions: PositionsLike) -> None:
        super().__init__(positions)
        self.direction, self.alpha, self.norm_scaled = direction, alpha, norm_scaled

    def edit(self, x: Tensor, sel: Tensor | None) -> Tensor:
        u, a = _per_row(x, self.direction, self.alpha, "steering direction", "alpha")
        delta = a * u
        if self.norm_scaled:
            delta = delta * x.norm(dim=-1, keepdim=True)
        return _add_at(x, delta, sel)

    def __repr__(self) -> str:
        return f"tl_persona.Steer(alpha={self.alpha.tolist()}, positions={self.positions.which!r})"


def _per_row(x: Tensor, direction: Tensor, strength: Tensor, what: str, name: str) -> tuple[Tensor, Tensor]:
    """``direction`` as ``[rows, 1, d]`` and ``strength`` as ``[rows, 1, 1]`` on x's device and dtype
    (rows: 1, or one per batch row), after checking their widths and row counts against ``x``."""
    B, _, d = x.shape
    if direction.shape[-1] != d:
        raise BadInput(f"{what} has width {direction.shape[-1]} but the activation has width {d}; use a direction of "
                       f"shape [d_model] = [{d}]")
    for t, nm, per_row_ndim in ((direction, "direction", 2), (strength, name, 1)):
        if t.ndim == per_row_ndim and t.shape[0] != B:
            raise BadInput(f"per-row {nm} has {t.shape[0]} rows but the batch has {B}")
    u = direction.to(device=x.device, dtype=x.dtype)
    u = u.view(-1, 1, d) if u.ndim == 2 else u.view(1, 1, d)
    return u, strength.to(device=x.device, dtype=x.dtype).view(-1, 1, 1)


def _add_at(x: Tensor, delta: Tensor, sel: Tensor | None) -> Tensor:
    """``x + delta`` at the selected positions (all of them for ``sel=None``)."""
    if sel is None:
        return x + delta
    return x + delta * sel.unsqueeze(-1).to(x.dtype)


def _check_strength(value: float | Tensor, name: str = "alpha", what: str = "steering strength") -> Tensor:
    """A finite number, or a 1-D tensor of them (one per batch row), as a float tensor."""
    if isinstance(value, (str, bytes, bool)) or value is None:
        raise BadInput(f"{name}={value!r} is not a number; pass a finite float (or a 1-D tensor, one per batch row)")
    a = torch.as_tensor(value, dtype=torch.float32).detach()
    if a.ndim > 1:
        raise BadInput(f"{name} must be a number or a 1-D tensor (one per batch row), got shape {tuple(a.shape)}")
    if not bool(torch.isfinite(a).all()):
        raise BadInput(f"{name}={value!r} is not finite; pass a finite {what}")
    return a


def _check_direction(direction: Any, per_row: str = "batch") -> Tensor:
    """A finite ``[d_model]`` (or ``[rows, d_model]``) direction as a float tensor."""
    d = torch.as_tensor(direction).detach().float()
    if d.ndim not in (1, 2) or d.shape[-1] == 0:
        raise BadInput(f"direction must have shape [d_model] or [{per_row}, d_model], got {tuple(d.shape)}")
    if not bool(torch.isfinite(d).all()):
        raise BadInput("direction contains NaN or inf; pass a finite vector")
    return d


def steer(
    hook_name: str,
    direction: Float[Tensor, " d_model"] | Float[Tensor, "batch d_model"],
    alpha: float | Float[Tensor, " batch"],
    *,
    scale: Literal["absolute", "resid_norm"] | float = "absolute",
    positions: PositionsLike = "all",
) -> FwdHooks:
    """Add ``alpha * direction`` to the activation at the selected positions.

    ``scale``: ``"absolute"`` adds ``alpha * direction`` as given; ``"resid_norm"`` adds
    ``alpha * |x| * direction / |direction|`` (alpha is then a fraction of the residual norm at
    each position); a number ``s`` multiplies alpha by ``s`` (e.g. a latent's typical max
    activation). ``direction`` may be ``[batch, d_model]`` and ``alpha`` ``[batch]`` to run several
    steering settings in one batch (one setting per row).
    """
    d = _check_direction(direction)
    a = _check_strength(alpha)
    norm_scaled = False
    if scale == "resid_norm":
        n = d.norm(dim=-1, keepdim=True)
        if bool((n == 0).any()):
            raise BadInput("scale='resid_norm' needs a non-zero direction")
        d, norm_scaled = d / n, True
    elif isinstance(scale, (int, float)) and not isinstance(scale, bool):
        if not math.isfinite(scale):
            raise BadInput(f"scale={scale!r} is not finite")
        a = a * float(scale)
    elif scale != "absolute":
        raise BadInput(f"scale={scale!r} must be 'absolute', 'resid_norm' or a number")
    return [(hook_name, _Steer(d, a, norm_scaled, positions))]


def steer_latent(
    sae: Any,
    latents: int | Sequence[int],
    alpha: float | Float[Tensor, " batch"],
    *,
    scale: Literal["absolute", "resid_norm"] | float = "absolute",
    hook_name: str | None = None,
    positions: PositionsLike = "all",
) -> FwdHooks:
    """Steer along SAE latents' decoder directions at the SAE's hook point.

    One latent steers along its ``W_dec`` row as stored; several latents along the sum of their
    unit decoder directions, rescaled to unit norm. ``scale`` as in :func:`steer` (pass a latent's
    typical max activation as a number to express alpha in units of it).
    """
    direction = latent_direction(sae, latents)
    return steer(sae_hook_name(sae, hook_name), direction, alpha, scale=scale, positions=positions)


# --------------------------------------------------------------------------- cap
class _Cap(Hook):
    kind = "cap"

    def __init__(self, unit: Tensor, threshold: Tensor, positions: PositionsLike) -> None:
        super().__init__(positions)
        self.unit, self.threshold = unit, threshold

    def edit(self, x: Tensor, sel: Tensor | None) -> Tensor:
        u, t = _per_row(x, self.unit, self.threshold, "capping direction", "threshold")
        excess = ((x * u).sum(-1, keepdim=True) - t).clamp(min=0.0)
        return _add_at(x, -excess * u, sel)

    def __repr__(self) -> str:
        return f"tl_persona.Cap(threshold={self.threshold.tolist()}, positions={self.positions.which!r})"


def cap(
    hook_name: str,
    direction: Float[Tensor, " d_model"] | Float[Tensor, "batch d_model"],
    threshold: float | Float[Tensor, " batch"],
    *,
    positions: PositionsLike = "all",
) -> FwdHooks:
    """Cap the activation's projection on ``direction`` at ``threshold``: ``x - max(0, x·u -
    threshold) u`` with ``u`` the unit direction, at the selected positions. Activations whose
    projection is already at most ``threshold`` are left exactly as they are.

    Activation capping (the "Assistant Axis" intervention) along a persona direction: it removes the
    excess along the persona and nothing else. ``direction`` may be ``[batch, d_model]`` and
    ``threshold`` ``[batch]`` to run one setting per batch row; a zero row is left unedited.
    """
    d = _check_direction(direction)
    t = _check_strength(threshold, "threshold", "ceiling of the projection")
    n = d.norm(dim=-1, keepdim=True)
    if d.ndim == 1 and float(n) == 0.0:
        raise BadInput("cap needs a non-zero direction (the zero vector has no projection to cap)")
    return [(hook_name, _Cap(torch.where(n > 0, d / n.clamp_min(1e-30), torch.zeros_like(d)), t, positions))]


# --------------------------------------------------------------------------- ablate / clamp
class _LatentEdit(Hook):
    kind = "ablate"

    def __init__(self, sae: Any, latents: Tensor, values: Tensor | None, positions: PositionsLike) -> None:
        super().__init__(positions)
        self.sae, self.latents, self.values = sae, latents, values

    def edit(self, x: Tensor, sel: Tensor | None) -> Tensor:
        if x.shape[-1] != d_in(self.sae):
            raise BadInput(f"SAE d_in={d_in(self.sae)} does not match the activation width {x.shape[-1]}")

        def f(rows: Tensor) -> Tensor:
            lat = encode(self.sae, rows)
            new = lat.clone()
            idx = self.latents.to(lat.device)
            new[:, idx] = 0.0 if self.values is None else self.values.to(lat.device, lat.dtype)
            # x + decode(f') - decode(f): the reconstruction error stays in the stream.
            return rows + (decode(self.sae, new) - decode(self.sae, lat))

        return _on_selected(x, sel, f)

    def __repr__(self) -> str:
        return f"tl_persona.LatentEdit(latents={self.latents.tolist()}, positions={self.positions.which!r})"


def ablate(
    sae: Any,
    latents: int | Sequence[int],
    *,
    mode: Literal["zero", "mean"] = "zero",
    means: Float[Tensor, " d_sae"] | None = None,
    hook_name: str | None = None,
    positions: PositionsLike = "all",
) -> FwdHooks:
    """Ablate latents at the selected positions: set them to zero or to their mean activation.

    Applied as ``x + decode(f') - decode(f)``, so only the latents' decoder contribution changes
    (by ``-f_i * W_dec[i]`` for a zero-ablation of a linear decoder) and the SAE's error term stays.
    ``mode="mean"`` needs ``means`` (all ``d_sae`` means, e.g. ``LatentDiff.base_mean``).
    """
    idx = check_latents(sae, latents)
    values = None
    if mode == "mean":
        if means is None:
            raise BadInput("mode='mean' needs means=<tensor [d_sae]> (e.g. from a LatentDiff)")
        m = torch.as_tensor(means).detach().float().flatten()
        if m.numel() != _d_sae(sae):
            raise BadInput(f"means has {m.numel()} entries; expected d_sae={_d_sae(sae)}")
        values = finite_tensor(m[idx], "means", fix="the mean of an ablated latent must be a finite number")
    elif mode != "zero":
        raise BadInput(f"mode={mode!r} must be 'zero' or 'mean' (use clamp(...) to set a value)")
    return [(sae_hook_name(sae, hook_name), _LatentEdit(sae, idx, values, positions))]


def clamp(
    sae: Any,
    latents: int | Sequence[int],
    value: float | Sequence[float] | Tensor,
    *,
    hook_name: str | None = None,
    positions: PositionsLike = "all",
) -> FwdHooks:
    """Clamp latents to ``value`` (one number, or one per latent) at the selected positions, via
    ``x + decode(f') - decode(f)``, so the change is exactly ``(value - f_i) * W_dec[i]`` per latent."""
    idx = check_latents(sae, latents)
    v = torch.as_tensor(value, dtype=torch.float32).detach().flatten()
    if v.numel() == 1:
        v = v.expand(idx.numel()).clone()
    if v.numel() != idx.numel():
        raise BadInput(f"clamp got {v.numel()} values for {idx.numel()} latents; pass one value or one per latent")
    if not bool(torch.isfinite(v).all()):
        raise BadInput(f"clamp value {value!r} is not finite")
    hook = _LatentEdit(sae, idx, v, positions)
    hook.kind = "clamp"
    return [(sae_hook_name(sae, hook_name), hook)]


def _d_sae(sae: Any) -> int:
    return int(sae.cfg.d_sae)


# --------------------------------------------------------------------------- project out
class _ProjectOut(Hook):
    kind = "project_out"

    def __init__(self, basis: Tensor, positions: PositionsLike) -> None:
        super().__init__(positions)
        self.basis = basis  # [d, k], orthonormal columns

    def edit(self, x: Tensor, sel: Tensor | None) -> Tensor:
        if self.basis.shape[0] != x.shape[-1]:
            raise BadInput(
                f"directions have width {self.basis.shape[0]} but the activation has width {x.shape[-1]}"
            )
        Q = self.basis.to(device=x.device, dtype=x.dtype)
        return _on_selected(x, sel, lambda rows: rows - (rows @ Q) @ Q.T)


def project_out(
    hook_name: str,
    directions: Float[Tensor, " d_model"] | Float[Tensor, "k d_model"],
    *,
    positions: PositionsLike = "all",
) -> FwdHooks:
    """Remove the component of the activation in the span of ``directions`` at the selected positions."""
    D = torch.as_tensor(directions).detach().float()
    if D.ndim == 1:
        D = D[None]
    if D.ndim != 2 or D.shape[0] == 0:
        raise BadInput(f"directions must have shape [d_model] or [k, d_model], got {tuple(D.shape)}")
    if not bool(torch.isfinite(D).all()) or bool((D.norm(dim=-1) == 0).any()):
        raise BadInput("directions must be finite and non-zero")
    Q, R = torch.linalg.qr(D.T)
    keep = R.diagonal().abs() > 1e-6 * R.diagonal().abs().max()
    return [(hook_name, _ProjectOut(Q[:, keep].contiguous(), positions))]


# --------------------------------------------------------------------------- apply
class _Counted:
    """Wraps a hook function for one attachment, so :class:`HookReport` counts the calls of that
    attachment only (one hook list attached to two models, or twice to one, keeps two counts)."""

    def __init__(self, fn: Callable[[Tensor, Any], Tensor]) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, activation: Tensor, hook: Any = None) -> Tensor:
        self.calls += 1
        return self.fn(activation, hook)

    def __repr__(self) -> str:
        return f"tl_persona.Counted({self.fn!r})"


@dataclass
class HookReport:
    """What :func:`apply` attached, and how often each hook fired (``calls``, in order)."""

    hooks: list[tuple[str, Any]]

    @property
    def calls(self) -> list[tuple[str, int]]:
        """``(hook_name, number of calls)`` for each attached hook, in the order given."""
        return [(n, int(h.calls)) for n, h in self.hooks]

    @property
    def counts(self) -> dict[str, int]:
        """Total calls per hook name."""
        c: Counter[str] = Counter()
        for n, k in self.calls:
            c[n] += k
        return dict(c)

    def unfired(self) -> list[str]:
        """Names of hooks that never fired."""
        return [n for n, k in self.calls if k == 0]

    def assert_all_fired(self) -> None:
        """Raise if any attached hook never fired (e.g. a bridge hook point that is never reached)."""
        bad = self.unfired()
        if bad:
            raise RuntimeError(
                f"these hooks never fired: {bad}; the hook points are not reached by this forward pass "
                "(TransformerBridge issues #1688/#1527) or the forward never ran"
            )


@contextmanager
def apply(model: Any, *hook_lists: FwdHooks, require_fired: bool = False) -> Iterator[HookReport]:
    """Attach any mix of hook lists to ``model`` for the body of a ``with`` block.

    Hook names are checked first (a wrong name fails before anything is attached, with the closest
    valid names). On exit, normal or by an exception, exactly the hooks added here are removed; hooks
    the user attached before stay. Yields a :class:`HookReport` with the call counts of this
    attachment (each function is wrapped for it, so the same hook list attached to another model at
    the same time keeps its own counts); with ``require_fired`` it raises after the body if some hook
    never fired here.
    """
    adapter = as_adapter(model)
    attached: list[tuple[str, Any]] = []
    for lst in hook_lists:
        for item in lst:
            if not (isinstance(item, tuple) and len(item) == 2 and callable(item[1])):
                raise BadInput(f"a fwd_hooks entry must be (hook_name, fn), got {item!r:.80}")
            name, fn = item
            adapter.check_hook(name)
            if isinstance(fn, Hook):
                fn.reset()
            attached.append((name, _Counted(fn)))
    report = HookReport(attached)
    with adapter.model.hooks(fwd_hooks=attached):
        yield report
    if require_fired:
        report.assert_all_fired()


def hooks_attached(model: Any) -> list[str]:
    """Names of the hook points of ``model`` that currently carry any forward or backward hook.

    Useful to assert that nothing leaked: after any tl_persona call it returns the hooks the user
    attached, and nothing else.
    """
    out = []
    seen: set[int] = set()
    for name, hp in as_adapter(model).model.hook_dict.items():
        if id(hp) in seen:
            continue
        seen.add(id(hp))
        if getattr(hp, "fwd_hooks", None) or getattr(hp, "bwd_hooks", None) or hp._forward_hooks:
            out.append(getattr(hp, "name", None) or name)
    return out
