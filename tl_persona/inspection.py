"""What a latent means: its top-activating contexts and the logit lens of its decoder direction.

A candidate from :func:`tl_persona.diff.diff_latents` is only a number until one reads where it
fires and what it writes. Three tools, all streaming and read-only:

* :func:`top_activating`: the ``k`` prompts on which a latent fires most, one example per prompt
  (its strongest token), rendered as text with that token marked ``⟦token⟧`` and its activation;
  keeps only ``k`` candidates per latent while it streams, never the activations.
* :func:`logit_lens`: the tokens the latent's decoder direction promotes and suppresses through
  the unembedding ``W_U``.
* :func:`latent_card`: both, plus firing statistics (and the diff's numbers when given), as a
  short card that prints as Markdown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, overload

import torch
from jaxtyping import Float
from torch import Tensor

from tl_persona.data import PromptsLike, Scope, TokenizedPrompts, as_prompt_set, check_scope
from tl_persona.engine import chunk_rows as _chunk_rows
from tl_persona.models import ModelAdapter, as_adapter
from tl_persona.saes import check_latents, check_sae, d_in, d_sae
from tl_persona.stats import LatentStats
from tl_persona.validate import BadInput

__all__ = [
    "ActivatingExample",
    "top_activating",
    "LogitLens",
    "logit_lens",
    "direct_logits",
    "LatentCard",
    "latent_card",
    "MARK",
]

MARK = ("⟦", "⟧")
"""Brackets put around the activating token in rendered examples."""


# =========================================================================== rendering
def _pieces(tokenizer: Any, ids: Sequence[int]) -> tuple[list[str], str]:
    """Per-token strings and the separator that joins them back into the decoded text."""
    pieces = [tokenizer.decode([int(i)]) for i in ids]
    joined = tokenizer.decode([int(i) for i in ids])
    return pieces, ("" if "".join(pieces) == joined else " ")


def _spaced(pieces: list[str], sep: str) -> tuple[str, ...]:
    """Token strings that concatenate to the decoded text (the separator folded into each token)."""
    return tuple(p if i == 0 or not sep else sep + p for i, p in enumerate(pieces))


def _render(tokenizer: Any, ids: Sequence[int], mark: int, value: float) -> str:
    """Text of ``ids`` with token ``mark`` (an index into ids) bracketed and its activation after it."""
    pieces, sep = _pieces(tokenizer, ids)
    out = []
    for i, p in enumerate(pieces):
        if i == mark:
            lead = p[: len(p) - len(p.lstrip())]
            body = p.strip() or repr(p)
            p = f"{lead}{MARK[0]}{body}{MARK[1]}({value:.3g})"
        out.append(p)
    return sep.join(out).replace("\n", "\\n")


@dataclass(frozen=True)
class ActivatingExample:
    """One context where a latent fires: the prompt, the token position and the activation.

    ``text`` shows ``context`` tokens on each side with the activating token marked ``⟦token⟧``
    followed by its activation; ``token`` is that token's text. ``tokens`` and ``acts`` are the
    window's token strings and the latent's activation on each (NaN outside the inspected scope),
    ``mark`` the index of the activating token in them: what a dashboard highlights.
    """

    latent: int
    prompt_index: int
    position: int
    activation: float
    token: str
    text: str
    tokens: tuple[str, ...] = ()
    acts: tuple[float, ...] = ()
    mark: int = -1

    def __str__(self) -> str:
        return f"{self.activation:8.3f}  prompt {self.prompt_index}:{self.position}  {self.text}"


# =========================================================================== top activating
def _stream_top(
    adapter: ModelAdapter,
    sae: Any,
    tp: TokenizedPrompts,
    latents: Tensor,
    k: int,
    scope: Scope,
    hook: str,
    batch_size: int,
) -> tuple[Tensor, Tensor, Tensor, LatentStats]:
    """Streaming per-prompt maxima -> running top-k per latent. Returns values [m, k], prompt ids
    [m, k], positions [m, k] (value -inf where fewer than k prompts) and stats of the latents."""
    m = len(latents)
    vals = torch.full((m, k), -torch.inf, dtype=torch.float32)
    pids = torch.full((m, k), -1, dtype=torch.long)
    poss = torch.full((m, k), -1, dtype=torch.long)
    stats = LatentStats(m)
    nonzero: list[list[Tensor]] = [[] for _ in range(m)]
    kept = [0] * m
    p = sae.W_dec
    lat = latents.to(p.device)
    step = _chunk_rows(d_sae(sae), p.device)
    for idx in tp.batch_plan(batch_size):
        pb = tp.make_batch(idx)
        mask = pb.mask(scope)
        acts = adapter.run_to_hook(pb.tokens, hook)
        mk = mask.to(acts.device)
        x = acts[mk].to(device=p.device, dtype=p.dtype)
        if x.shape[0] == 0:
            continue
        where = mk.nonzero().to(p.device)
        B, T = mk.shape
        dense = torch.full((B, T, m), -torch.inf, dtype=torch.float32, device=p.device)
        with torch.inference_mode():
            for s in range(0, x.shape[0], step):
                f = sae.encode(x[s : s + step])[:, lat].float()
                stats.update(f)
                for j in range(m):
                    if kept[j] < _HIST_KEEP:
                        v = f[:, j][f[:, j] > 0].cpu()
                        nonzero[j].append(v[: _HIST_KEEP - kept[j]])
                        kept[j] += int(v.numel())
                w = where[s : s + step]
                dense[w[:, 0], w[:, 1]] = f
        best, pos = dense.max(1)  # [B, m]
        cand_v = torch.cat([vals, best.T.cpu()], 1)
        cand_p = torch.cat([pids, pb.indices.to(torch.long)[None, :].expand(m, B)], 1)
        cand_q = torch.cat([poss, pos.T.cpu()], 1)
        top = torch.topk(cand_v, k, dim=1)
        vals = top.values
        pids = torch.gather(cand_p, 1, top.indices)
        poss = torch.gather(cand_q, 1, top.indices)
    hists = [torch.cat(v) if v else torch.zeros(0) for v in nonzero]
    return vals, pids, poss, stats, hists


_HIST_KEEP = 200_000  # non-zero activations kept per latent for its histogram


def _histogram(values: Tensor, bins: int = 24) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Bin edges and counts of a latent's non-zero activations (empty when it never fires)."""
    if values.numel() == 0:
        return (), ()
    hi = float(values.max())
    counts, edges = torch.histogram(values.float(), bins=bins, range=(0.0, hi if hi > 0 else 1.0))
    return tuple(float(e) for e in edges), tuple(int(c) for c in counts)


def _windows(adapter: ModelAdapter, sae: Any, tp: TokenizedPrompts, lat: Tensor, picks: dict[int, list[tuple[int, int, int]]],
             scope: Scope, hook: str, batch_size: int) -> dict[tuple[int, int], list[float]]:
    """The latents' activation on every token of the chosen prompts (NaN outside ``scope``):
    ``{(latent, prompt): [act per position]}``. A second pass over the few top prompts only."""
    want = sorted({pi for ps in picks.values() for pi, _, _ in ps})
    out: dict[tuple[int, int], list[float]] = {}
    p = sae.W_dec
    for s in range(0, len(want), batch_size):
        pb = tp.make_batch(want[s : s + batch_size])
        mask = pb.mask(scope)
        acts = adapter.run_to_hook(pb.tokens, hook)
        with torch.inference_mode():
            f = sae.encode(acts.to(device=p.device, dtype=p.dtype).flatten(0, 1))[:, lat.to(p.device)].float()
        f = f.reshape(acts.shape[0], acts.shape[1], -1).cpu().clone()
        f[~mask.cpu()] = float("nan")
        for b, pi in enumerate(pb.indices.tolist()):
            for j, latent in enumerate(lat.tolist()):
                out[(int(latent), int(pi))] = f[b, :, j].tolist()
    return out


@overload
def top_activating(model: Any, sae: Any, latents: int, prompts: PromptsLike, **kw: Any) -> list[ActivatingExample]: ...
@overload
def top_activating(model: Any, sae: Any, latents: Sequence[int], prompts: PromptsLike, **kw: Any) -> dict[int, list[ActivatingExample]]: ...


def top_activating(
    model: Any,
    sae: Any,
    latents: int | Sequence[int] | Tensor,
    prompts: PromptsLike,
    *,
    k: int = 10,
    context: int = 8,
    scope: Scope = "all",
    batch_size: int = 16,
    hook_name: str | None = None,
) -> list[ActivatingExample] | dict[int, list[ActivatingExample]]:
    """The ``k`` prompts on which each latent fires most, as rendered examples, strongest first.

    Why: reading a latent's top contexts is the quickest test of what it means. One example per
    prompt (its strongest token in ``scope``), only prompts where the latent fires (> 0). Streams
    over the prompts keeping ``k`` candidates per latent; ``context`` tokens are shown on each side
    of the marked token. Returns a list for one latent, a ``{latent: list}`` dict for several.
    """
    if not isinstance(k, int) or k < 1:
        raise BadInput(f"k must be a positive integer, got {k!r}")
    if not isinstance(context, int) or context < 0:
        raise BadInput(f"context must be a non-negative integer, got {context!r}")
    check_scope(scope)
    single = isinstance(latents, int)
    lat = check_latents(sae, latents)
    adapter = as_adapter(model)
    hook = check_sae(adapter, sae, hook_name)
    tp = as_prompt_set(prompts).tokenize(adapter)
    out = _examples(adapter, sae, tp, lat, k, context, scope, hook, batch_size)[0]
    return out[int(lat[0])] if single else out


def _examples(
    adapter: ModelAdapter, sae: Any, tp: TokenizedPrompts, lat: Tensor, k: int, context: int, scope: Scope,
    hook: str, batch_size: int,
) -> tuple[dict[int, list[ActivatingExample]], LatentStats]:
    vals, pids, poss, stats, hists = _stream_top(adapter, sae, tp, lat, k, scope, hook, batch_size)
    tok = adapter.tokenizer
    picks = {int(latent): [(pi, po, j) for v, pi, po in zip(vals[j].tolist(), pids[j].tolist(), poss[j].tolist())
                           if v > 0 and pi >= 0] for j, latent in enumerate(lat.tolist())}
    window = _windows(adapter, sae, tp, lat, picks, scope, hook, batch_size)
    out: dict[int, list[ActivatingExample]] = {}
    for j, latent in enumerate(lat.tolist()):
        exs = []
        for v, pi, po in zip(vals[j].tolist(), pids[j].tolist(), poss[j].tolist()):
            if not v > 0 or pi < 0:
                continue
            row = tp.rows[pi]
            start = max(int(tp.has_bos[pi]), po - context)
            end = min(len(row), po + context + 1)
            ids = [int(t) for t in row[start:end]]
            acts = window[(int(latent), int(pi))][start:end]
            exs.append(ActivatingExample(
                latent=int(latent), prompt_index=int(pi), position=int(po), activation=float(v),
                token=tok.decode([int(row[po])]), text=_render(tok, ids, po - start, v),
                tokens=_spaced(*_pieces(tok, ids)), acts=tuple(float(a) for a in acts), mark=po - start,
            ))
        out[int(latent)] = exs
    return out, stats, {int(latent): _histogram(hists[j]) for j, latent in enumerate(lat.tolist())}


# =========================================================================== logit lens
@dataclass(frozen=True)
class LogitLens:
    """Tokens a latent's decoder direction promotes and suppresses through the unembedding.

    ``promoted`` / ``suppressed``: ``(token, score)`` pairs, strongest first, where ``score`` is the
    direct logit change per unit of the latent's activation (before the final norm's per-position
    scale, see :func:`logit_lens`).
    """

    latent: int
    promoted: tuple[tuple[str, float], ...]
    suppressed: tuple[tuple[str, float], ...]


def _final_norm(model: Any) -> tuple[bool, Tensor | None]:
    """(does the final norm centre the residual?, its elementwise weight or None)."""
    kind = str(getattr(model.cfg, "normalization_type", None) or "")
    center = kind.startswith("LN")
    weight = None
    ln = getattr(model, "ln_final", None)
    if ln is not None and not kind.endswith("Pre"):
        for name, p in ln.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("w", "weight") and p.ndim == 1:
                weight = p.detach()
                break
    return center, weight


def direct_logits(model: Any, direction: Float[Tensor, " d_model"]) -> Float[Tensor, " d_vocab"]:
    """The logit change that adding ``direction`` to the final residual stream causes, up to the final
    norm's positive per-position scale: centre it (LayerNorm), multiply by the norm's weight (when
    not folded into ``W_U``), then ``@ W_U``. The unembedding bias does not depend on the direction."""
    m = as_adapter(model).model
    W_U = m.W_U.detach()
    v = direction.detach().to(device=W_U.device, dtype=torch.float32)
    if v.shape[-1] != W_U.shape[0]:
        raise BadInput(
            f"direction has width {v.shape[-1]} but the unembedding expects {W_U.shape[0]}; the logit lens "
            "applies to residual-stream directions (SAEs on the residual stream)"
        )
    center, w = _final_norm(m)
    if center:
        v = v - v.mean()
    if w is not None:
        v = v * w.to(device=v.device, dtype=v.dtype)
    return v @ W_U.float()


def logit_lens(model: Any, sae: Any, latent: int, k: int = 10) -> LogitLens:
    """The ``k`` tokens ``latent``'s decoder direction promotes most and suppresses most.

    Why: what a latent writes into the residual stream is half of its meaning; through ``W_U`` one
    reads which next tokens it makes likelier. The direction (row of ``W_dec``) is centred when the
    final norm is a LayerNorm and scaled by the norm's weight when it is not folded into ``W_U``;
    the norm's division by the residual's scale is a positive factor per position and is left out
    (it does not change the ranking). Direct effect only: later layers are ignored.
    """
    if not isinstance(k, int) or k < 1:
        raise BadInput(f"k must be a positive integer, got {k!r}")
    idx = int(check_latents(sae, [latent])[0])
    adapter = as_adapter(model)
    if d_in(sae) != adapter.d_model:
        raise BadInput(
            f"SAE d_in={d_in(sae)} differs from the model's d_model={adapter.d_model}: the logit lens applies "
            "to residual-stream SAEs"
        )
    scores = direct_logits(adapter, sae.W_dec.detach()[idx]).cpu()
    tok = adapter.tokenizer
    k = min(k, scores.numel())
    hi = torch.topk(scores, k)
    lo = torch.topk(-scores, k)
    return LogitLens(
        latent=idx,
        promoted=tuple((tok.decode([int(i)]), float(v)) for v, i in zip(hi.values, hi.indices)),
        suppressed=tuple((tok.decode([int(i)]), float(-v)) for v, i in zip(lo.values, lo.indices)),
    )


# =========================================================================== card
@dataclass(frozen=True)
class LatentCard:
    """A short description of one latent: where it fires, what it writes, how it changed.

    ``examples``: top-activating contexts; ``lens``: the logit lens; ``n_tokens``, ``freq``, ``mean``,
    ``max``: firing statistics over the inspected prompts' scope; ``diff``: the latent's row of a
    :class:`~tl_persona.diff.LatentDiff` (or empty). ``str(card)`` is Markdown.
    """

    latent: int
    hook_name: str
    examples: tuple[ActivatingExample, ...]
    lens: LogitLens
    n_tokens: int
    freq: float
    mean: float
    max: float
    diff: dict[str, float] = field(default_factory=dict)
    histogram: tuple[tuple[float, ...], tuple[int, ...]] = ((), ())

    def to_html(self) -> str:
        """The card as a self-contained HTML fragment (a Neuronpedia-style dashboard): statistics,
        the top contexts with every token shaded by the latent's activation (hover for the value;
        the activating token outlined), the histogram of non-zero activations and the logit lens as
        bars. Inline styles and SVG only: it opens offline, inside any page."""
        import html as _h

        from tl_persona.models import hook_layer

        esc = _h.escape
        layer = hook_layer(self.hook_name)
        where = f" (layer {layer})" if layer is not None else ""
        parts = [f"<section class='card' id='latent-{self.latent}'>",
                 f"<h3>Latent {self.latent} at <code>{esc(self.hook_name)}</code>{esc(where)}</h3>",
                 f"<p>Fires on {100 * self.freq:.2f}% of {self.n_tokens:,} tokens; mean {self.mean:.4g}, "
                 f"max {self.max:.4g}.</p>"]
        if self.diff:
            d = self.diff
            parts.append(f"<p>Diff: delta {d.get('delta', float('nan')):+.4g} (base {d.get('base_mean', float('nan')):.4g}"
                         f" &rarr; fine-tuned {d.get('finetuned_mean', float('nan')):.4g}), effect size "
                         f"{d.get('effect_size', float('nan')):+.3g}.</p>")
        parts.append("<div class='card-cols'><div class='card-main'><h4>Top activations</h4>")
        top = max((e.activation for e in self.examples), default=0.0) or 1.0
        if not self.examples:
            parts.append("<p>(never fires on these prompts)</p>")
        for e in self.examples:
            toks = e.tokens or (e.token,)
            acts = e.acts or tuple(e.activation if i == max(e.mark, 0) else 0.0 for i in range(len(toks)))
            spans = []
            for i, (t, a) in enumerate(zip(toks, acts)):
                shade = 0.0 if a != a or a <= 0 else min(1.0, a / top)
                tip = "outside scope" if a != a else f"{a:.3g}"
                style = f"background:rgba(230,85,13,{shade:.2f})"
                if i == e.mark:
                    style += ";outline:1.5px solid #a63603"
                text = t.replace("\n", "\\n")
                spans.append(f"<span class='tok' style='{style}' title='{esc(tip)}'>{esc(text) or '&nbsp;'}</span>")
            parts.append(f"<div class='ctx'><span class='act'>{e.activation:.3f}</span>{''.join(spans)}</div>")
        parts.append("</div><div class='card-side'>")
        parts.append(_svg_histogram(*self.histogram))
        parts.append(_svg_lens(self.lens))
        parts.append("</div></div></section>")
        return "".join(parts)

    def to_markdown(self) -> str:
        """The card as Markdown: a heading, statistics, the examples and the logit lens."""
        from tl_persona.models import hook_layer

        layer = hook_layer(self.hook_name)
        where = f" (layer {layer})" if layer is not None else ""
        lines = [f"### Latent {self.latent} at `{self.hook_name}`{where}", ""]
        lines.append(
            f"Fires on {100 * self.freq:.2f}% of {self.n_tokens:,} tokens; mean {self.mean:.4g}, max {self.max:.4g}."
        )
        if self.diff:
            d = self.diff
            lines.append(
                f"Diff: delta {d.get('delta', float('nan')):+.4g} (base {d.get('base_mean', float('nan')):.4g} -> "
                f"fine-tuned {d.get('finetuned_mean', float('nan')):.4g}), effect size "
                f"{d.get('effect_size', float('nan')):+.3g}."
            )
        lines += ["", "**Top activations**", ""]
        if not self.examples:
            lines.append("(never fires on these prompts)")
        for i, e in enumerate(self.examples, 1):
            lines.append(f"{i}. {e.activation:.3f} · prompt {e.prompt_index}: `{e.text}`")
        fmt = lambda pairs: ", ".join(f"`{t!s}` ({v:+.3g})" for t, v in pairs)  # noqa: E731
        lines += ["", "**Logit lens**", "", f"- promotes: {fmt(self.lens.promoted)}",
                  f"- suppresses: {fmt(self.lens.suppressed)}"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def _svg_histogram(edges: Sequence[float], counts: Sequence[int], w: int = 260, h: int = 90) -> str:
    if not counts:
        return "<p class='muted'>no non-zero activations</p>"
    top = max(counts) or 1
    bw = w / len(counts)
    bars = "".join(
        f"<rect x='{i * bw:.1f}' y='{h - h * c / top:.1f}' width='{max(bw - 1, 1):.1f}' height='{h * c / top:.1f}' "
        f"fill='#e6550d'><title>{edges[i]:.3g}-{edges[i + 1]:.3g}: {c}</title></rect>"
        for i, c in enumerate(counts))
    return (f"<h4>Activation histogram</h4><svg class='hist' width='{w}' height='{h + 14}' viewBox='0 0 {w} {h + 14}' "
            f"role='img' aria-label='histogram of non-zero activations'>{bars}"
            f"<text x='0' y='{h + 12}' font-size='10'>0</text><text x='{w}' y='{h + 12}' font-size='10' "
            f"text-anchor='end'>{edges[-1]:.3g}</text></svg>")


def _svg_lens(lens: LogitLens, w: int = 260) -> str:
    import html as _h

    rows = [(t, v) for t, v in lens.promoted] + [(t, v) for t, v in lens.suppressed]
    if not rows:
        return ""
    top = max(abs(v) for _, v in rows) or 1.0
    half, rh = w / 2, 14
    out = [f"<h4>Logit lens</h4><svg class='lens' width='{w}' height='{rh * len(rows)}' "
           f"viewBox='0 0 {w} {rh * len(rows)}' role='img' aria-label='logit lens'>"]
    for i, (t, v) in enumerate(rows):
        bw = (half - 4) * abs(v) / top
        x = half if v >= 0 else half - bw
        color = "#3182bd" if v >= 0 else "#de2d26"
        label = _h.escape(repr(t)[1:-1])
        anchor, tx = ("end", half - 4) if v >= 0 else ("start", half + 4)
        out.append(f"<rect x='{x:.1f}' y='{i * rh + 2}' width='{bw:.1f}' height='{rh - 4}' fill='{color}'>"
                   f"<title>{label}: {v:+.3g}</title></rect><text x='{tx}' y='{i * rh + rh - 3}' font-size='10' "
                   f"text-anchor='{anchor}'>{label}</text>")
    out.append("</svg>")
    return "".join(out)


def latent_card(
    model: Any,
    sae: Any,
    latent: int,
    prompts: PromptsLike,
    *,
    k: int = 8,
    context: int = 8,
    n_logits: int = 8,
    scope: Scope = "all",
    batch_size: int = 16,
    hook_name: str | None = None,
    diff: Any = None,
) -> LatentCard:
    """Build a :class:`LatentCard` for ``latent``: top ``k`` contexts over ``prompts``, the logit
    lens (``n_logits`` tokens each way) and its firing statistics; with ``diff`` (a
    :class:`~tl_persona.diff.LatentDiff`) also its change between the two models."""
    check_scope(scope)
    if not isinstance(k, int) or k < 1:
        raise BadInput(f"k must be a positive integer, got {k!r}")
    adapter = as_adapter(model)
    lat = check_latents(sae, [latent])
    hook = check_sae(adapter, sae, hook_name)
    tp = as_prompt_set(prompts).tokenize(adapter)
    exs, stats, hist = _examples(adapter, sae, tp, lat, k, context, scope, hook, batch_size)
    idx = int(lat[0])
    row: dict[str, float] = {}
    if diff is not None:
        r = diff.to_pandas().loc[idx]
        row = {c: float(r[c]) for c in ("delta", "base_mean", "finetuned_mean", "effect_size", "base_freq", "finetuned_freq")}
    return LatentCard(
        latent=idx,
        hook_name=hook,
        examples=tuple(exs[idx]),
        lens=logit_lens(adapter, sae, idx, n_logits),
        n_tokens=stats.n,
        freq=float(stats.freq[0]) if stats.n else 0.0,
        mean=float(stats.mean[0]),
        max=float(stats.max[0]) if stats.n else float("nan"),
        diff=row,
        histogram=hist[idx],
    )
