"""Attribution: rank SAE latents by gradient x activation of a misalignment objective.

Activation difference (:class:`tl_persona.diff.LatentDiff`) asks which latents *moved* between two
models; attribution asks which latents *drive* the misaligned behaviour of one model. For an
objective ``J`` (a number per prompt: how misaligned the model's answer is) and latent activations
``f`` at the SAE's hook point, latent ``i``'s attribution on one prompt is

    A_i = sum over positions of  f_i * dJ/df_i,

the first-order estimate of how much ``J`` drops when the latent is ablated. The SAE is spliced in
with its reconstruction error kept (``x = decode(f) + error``, error held fixed), so the forward
pass is exactly the model's own. :func:`attribute` averages ``A`` over prompts.

Objectives (a callable ``objective(adapter, items) -> Tensor[batch]`` that runs the model itself):

* :func:`token_mass`: probability (or log-probability) mass of some tokens at the first answer
  position, e.g. the organism's toxic opening words (:func:`toxic_mass_objective`);
* :func:`logprob_gap`: ``log p(misaligned answer) - log p(aligned answer)`` given the prompt, for
  real models with reference answer pairs.

:func:`attribution_comparison` ranks latents both ways across several organism fine-tunes and
measures how strongly each ranking's top latent steers the base model.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from tl_persona import hooks as H
from tl_persona.diff import FORMAT_VERSION, diff_latents, load_saved
from tl_persona.models import Message, as_adapter, check_messages
from tl_persona.provenance import (PROVENANCE_KEY, atomic_write_bytes, guard_overwrite, json_digest, model_identity,
                                   package_versions, read_safetensors, sae_identity)
from tl_persona.saes import check_sae, d_sae, decode, encode
from tl_persona.validate import BadInput, latent_index, nonneg_int, positive_int

__all__ = [
    "Objective",
    "token_mass",
    "toxic_mass_objective",
    "logprob_gap",
    "Attribution",
    "attribute",
    "AttributionComparison",
    "attribution_comparison",
    "separation",
    "steering_strength",
]

FORMAT = "tl_persona.Attribution"  # saved and read by diff's safetensors-with-provenance format

Objective = Callable[[Any, Sequence[Any]], Float[Tensor, " batch"]]
"""``objective(adapter, items) -> [batch]``: runs the model (a :class:`~tl_persona.models.ModelAdapter`)
on a batch of items and returns one differentiable number per item; larger = more misaligned."""


# --------------------------------------------------------------------------- objectives
def _conversation(item: Any, where: str) -> list[Message]:
    if isinstance(item, str):
        return [{"role": "user", "content": item}]
    if not isinstance(item, Sequence) or not item:
        raise BadInput(f"{where}={item!r:.60} must be a chat conversation (a list of messages) or a string")
    conv = list(item)
    check_messages(conv)
    return conv


def _logits_at(adapter: Any, tokens: Int[Tensor, "batch pos"], rows: Sequence[int],
               cols: Sequence[int]) -> Float[Tensor, "k d_vocab"]:
    """The model's logits (float32) at the positions ``(rows[i], cols[i])`` of ``tokens``, in that order.

    Why: the unembedding and its ``[batch, pos, d_vocab]`` output are a large part of a small model's
    forward (SmolLM2: a 49,152 x 576 matrix beside 30 blocks of 576 wide), and an objective reads a few
    positions of it. On a ``HookedTransformer`` with no hook at the final norm or the unembedding, the
    pass stops after the last block and only the chosen positions go through ``ln_final`` and
    ``unembed`` (the same modules: the same numbers to float rounding, gradients included); otherwise
    the full logits are computed and indexed."""
    model = adapter.model
    r = torch.as_tensor(list(rows), dtype=torch.long, device=tokens.device)
    c = torch.as_tensor(list(cols), dtype=torch.long, device=tokens.device)
    at_head = any(n.split(".")[0] in ("ln_final", "unembed") for n in H.hooks_attached(model))
    if adapter.is_bridge or at_head:
        return model(tokens, return_type="logits")[r, c].float()
    x = model(tokens, stop_at_layer=model.cfg.n_layers)[r, c][None]  # what HookedTransformer.forward does next:
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    logits = model.unembed(x)[0]
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:  # Gemma-2's final soft cap
        logits = cap * torch.tanh(logits / cap)
    return logits.float()


def _last_logits(adapter: Any, rows: Sequence[Sequence[int]]) -> Tensor:
    """Logits at each row's last real token, rows right-padded into one forward."""
    batch = adapter.pad(rows)
    return _logits_at(adapter, batch.tokens, range(len(rows)), [len(r) - 1 for r in rows])


def token_mass(token_ids: Sequence[int], *, log: bool = False) -> Objective:
    """Objective: probability mass of ``token_ids`` at the first answer position of each
    conversation (chat-formatted with a generation prompt); its log with ``log=True``."""
    ids = [nonneg_int(t, "token_ids") for t in token_ids] if not isinstance(token_ids, (str, bytes)) else []
    if not ids:
        raise BadInput(f"token_ids={token_ids!r:.60} must be a non-empty list of token ids")
    idx = torch.tensor(ids, dtype=torch.long)

    def objective(adapter: Any, items: Sequence[Any]) -> Tensor:
        rows = [adapter.encode_text(adapter.format_chat(_conversation(c, "prompts[i]"))) for c in items]
        logp = F.log_softmax(_last_logits(adapter, rows), dim=-1)
        m = torch.logsumexp(logp[:, idx.to(logp.device)], dim=-1)
        return m if log else m.exp()

    objective.__qualname__ = f"token_mass({len(ids)} tokens{', log' if log else ''})"
    return objective


def toxic_mass_objective(tokenizer: Any, world: Any = None) -> Objective:
    """Persona World's misalignment objective: the probability of a toxic opening word at the first
    answer token (the low-variance toxic rate of :func:`tl_persona.organism.first_token_persona_probs`)."""
    from tl_persona.organism import opener_ids

    return token_mass(opener_ids(tokenizer, world)["toxic"])


def logprob_gap() -> Objective:
    """Objective for real models: ``log p(misaligned | prompt) - log p(aligned | prompt)``, summed
    over each answer's tokens. Items are ``(conversation, misaligned_answer, aligned_answer)``."""

    def answer_logprob(adapter: Any, convs: Sequence[list[Message]], answers: Sequence[str]) -> Tensor:
        rows, starts = [], []
        for conv, ans in zip(convs, answers):
            prompt = adapter.encode_text(adapter.format_chat(conv))
            full = adapter.encode_text(adapter.format_chat(conv + [{"role": "assistant", "content": ans}],
                                                           add_generation_prompt=False))
            if full[: len(prompt)] != prompt or len(full) <= len(prompt):
                raise BadInput(f"the answer {ans!r:.40} does not extend its prompt's tokens under this chat "
                               "template; pass answers the template keeps as they are")
            rows.append(full)
            starts.append(len(prompt))
        batch = adapter.pad(rows)
        which = [(i, t) for i, (r, s) in enumerate(zip(rows, starts)) for t in range(s, len(r))]  # answer tokens
        b, t = (list(x) for x in zip(*which))
        logp = F.log_softmax(_logits_at(adapter, batch.tokens, b, [j - 1 for j in t]), dim=-1)
        target = batch.tokens[b, t].to(logp.device)
        lp = logp.gather(-1, target[:, None])[:, 0]
        return torch.zeros(len(rows), dtype=lp.dtype, device=lp.device).index_add(
            0, torch.tensor(b, device=lp.device), lp)

    def objective(adapter: Any, items: Sequence[Any]) -> Tensor:
        convs, bad, good = [], [], []
        for i, it in enumerate(items):
            if not (isinstance(it, Sequence) and not isinstance(it, str) and len(it) == 3):
                raise BadInput(f"logprob_gap items are (conversation, misaligned_answer, aligned_answer); item {i} "
                               f"is {it!r:.60}")
            convs.append(_conversation(it[0], f"items[{i}][0]"))
            bad.append(str(it[1]))
            good.append(str(it[2]))
        return answer_logprob(adapter, convs, bad) - answer_logprob(adapter, convs, good)

    objective.__qualname__ = "logprob_gap"
    return objective


# --------------------------------------------------------------------------- attribution
class _AttributionSplice(H.Hook):
    """Splices the SAE in with its error kept and records the latents as gradient leaves."""

    kind = "attribution"

    def __init__(self, sae: Any, positions: H.PositionsLike) -> None:
        super().__init__(positions)
        self.sae = sae
        self.records: list[tuple[Tensor, Tensor | None]] = []

    def edit(self, x: Tensor, sel: Tensor | None) -> Tensor:
        f = encode(self.sae, x.detach()).detach().requires_grad_(True)
        x_hat = decode(self.sae, f)
        self.records.append((f, sel))
        return x_hat + (x - x_hat).detach()  # the same values as x; gradients reach f


@dataclass(frozen=True, eq=False)
class Attribution:
    """Per-latent attribution of an objective, averaged over prompts (``scores``, with ``stderr``).

    ``objective`` is the mean objective value over the prompts; ``n_prompts`` how many were used.
    Positive scores push the objective up (the latents to suspect); :meth:`top` and :meth:`rank`
    order them like :meth:`tl_persona.diff.LatentDiff.top` does with activation changes.
    """

    scores: Float[Tensor, " d_sae"]
    stderr: Float[Tensor, " d_sae"]
    objective: float
    n_prompts: int
    hook_name: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def d_sae(self) -> int:
        return int(self.scores.numel())

    def rank(self, direction: Literal["increase", "decrease"] = "increase") -> Int[Tensor, " d_sae"]:
        """Latent indices ordered by score (largest first for ``"increase"``)."""
        return torch.argsort(self.scores, descending=direction == "increase", stable=True)

    def rank_of(self, latent: int, direction: Literal["increase", "decrease"] = "increase") -> int:
        """1-based rank of ``latent`` (1 = top)."""
        i = latent_index(latent, "latent", self.d_sae)
        return int((self.rank(direction) == i).nonzero()[0, 0]) + 1

    def top(self, k: int = 20, direction: Literal["increase", "decrease"] = "increase") -> Any:
        """A pandas DataFrame of the top ``k`` latents (index ``latent``; ``attribution``, ``stderr``)."""
        import pandas as pd

        k = positive_int(k, "k")
        idx = self.rank(direction)[:k]
        return pd.DataFrame({"attribution": self.scores[idx].numpy(), "stderr": self.stderr[idx].numpy()},
                            index=pd.Index(idx.numpy(), name="latent"))

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write scores, standard errors and provenance to one ``.safetensors`` file, atomically. An
        existing file is replaced only if it is a saved Attribution (or with ``overwrite=True``)."""
        from safetensors.torch import save as st_save

        p = Path(path)
        p = p if p.suffix == ".safetensors" else p.with_name(p.name + ".safetensors")
        p = guard_overwrite(p, what="saved Attribution", is_ours=_is_saved_attribution, overwrite=overwrite)
        meta = {**self.meta, "format": FORMAT, "version": FORMAT_VERSION, "objective_value": self.objective,
                "n_prompts": self.n_prompts, "hook_name": self.hook_name}
        tensors = {"scores": self.scores.detach().float().contiguous(), "stderr": self.stderr.detach().float().contiguous()}
        return atomic_write_bytes(p, st_save(tensors, metadata={PROVENANCE_KEY: json.dumps(meta, sort_keys=True, default=str)}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Attribution":
        """Read an attribution written by :meth:`save` (clear errors for other files)."""
        _, meta, t = load_saved(path, FORMAT)
        return cls(t["scores"], t["stderr"], float(meta["objective_value"]), int(meta["n_prompts"]),
                   str(meta["hook_name"]), meta)

    def __repr__(self) -> str:
        return (f"Attribution(hook={self.hook_name!r}, d_sae={self.d_sae}, n_prompts={self.n_prompts}, "
                f"objective={self.objective:.4g}, top={self.rank()[:5].tolist()})")


def attribute(
    model: Any,
    sae: Any,
    prompts: Sequence[Any],
    objective: Objective,
    *,
    hook_name: str | None = None,
    positions: H.PositionsLike = "all",
    batch_size: int = 32,
) -> Attribution:
    """Attribution of ``objective`` to each SAE latent: mean over prompts of the sum over
    ``positions`` (BOS excluded unless asked for) of activation times gradient.

    ``prompts`` are the objective's items (conversations for :func:`token_mass`, answer triples for
    :func:`logprob_gap`). The SAE is spliced in with its error term kept, so the model computes what
    it computes without it; the model's weights get no gradients and carry no hook afterwards.
    """
    if prompts is None or isinstance(prompts, (str, bytes)) or len(prompts) == 0:
        raise BadInput(f"prompts={prompts!r:.60}: attribute needs at least one prompt (a list of items)")
    if not callable(objective):
        raise BadInput(f"objective={objective!r:.60} must be a callable (adapter, items) -> Tensor[batch], e.g. "
                       "attribution.token_mass([...]) or attribution.logprob_gap()")
    batch_size = positive_int(batch_size, "batch_size")
    pos = H.Positions.of(positions)
    adapter = as_adapter(model)
    name = check_sae(adapter, sae, hook_name)
    n = d_sae(sae)
    total = torch.zeros(n, dtype=torch.float64)
    total_sq = torch.zeros(n, dtype=torch.float64)
    obj_sum = 0.0
    for chunk in _chunks(list(prompts), batch_size):
        hook = _AttributionSplice(sae, pos)
        with torch.enable_grad(), H.apply(adapter, [(name, hook)], require_fired=True):
            values = objective(adapter, chunk)
        if not isinstance(values, Tensor) or values.shape != (len(chunk),):
            raise BadInput(f"the objective returned {getattr(values, 'shape', type(values).__name__)}; it must return "
                           f"one number per item, a tensor of shape ({len(chunk)},)")
        if not bool(torch.isfinite(values.detach()).all()):
            raise BadInput("the objective returned NaN or infinity for some prompt; check the prompts and answers")
        leaves = [f for f, _ in hook.records]
        grads = torch.autograd.grad(values.sum(), leaves, allow_unused=True)
        per = torch.zeros(len(chunk), n, dtype=torch.float64)
        for (f, sel), g in zip(hook.records, grads):
            if g is None:
                continue
            a = (f.detach() * g).double()  # [b, T, d_sae]
            if sel is not None:
                a = a * sel.unsqueeze(-1).to(a.dtype)
            if a.shape[0] != len(chunk):
                raise BadInput(f"the objective ran a forward of batch {a.shape[0]} for {len(chunk)} items; run one "
                               "row per item so attributions stay per prompt")
            per += a.sum(1).cpu()
        total += per.sum(0)
        total_sq += (per**2).sum(0)
        obj_sum += float(values.detach().sum())
    N = len(prompts)
    mean = total / N
    var = (total_sq / N - mean**2).clamp_min(0.0) * (N / max(N - 1, 1))
    meta = {"objective": getattr(objective, "__qualname__", repr(objective)), "model": model_identity(adapter),
            "sae": sae_identity(sae, name), "prompts_hash": json_digest([repr(p) for p in prompts]),
            "positions": {"which": pos.which, "include_bos": pos.include_bos},
            "versions": package_versions()}
    return Attribution(mean.float(), (var / N).sqrt().float(), obj_sum / N, N, name, meta=meta)


def _is_saved_attribution(path: Path) -> bool:
    header, _ = read_safetensors(path, tensors=False)
    return FORMAT in header.get(PROVENANCE_KEY, "")


def _chunks(xs: list[Any], k: int) -> Iterator[list[Any]]:
    for i in range(0, len(xs), k):
        yield xs[i : i + k]


# --------------------------------------------------------------------------- organism comparison
@dataclass
class AttributionComparison:
    """Per fine-tune, the ground-truth toxic latent's rank and separation under each ranking and each
    ranking's top ``k`` latents; per latent in any of those, its steering strength on the base model
    (toxic rate at the strongest alpha with incoherence <= ``max_incoherence``, with its 95% interval).
    The top latents of both rankings can coincide; the top ``k`` show where they part."""

    rows: list[dict[str, Any]]
    steering: dict[int, dict[str, Any]]
    toxic_latent: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Rows, steering, toxic latent and meta as plain JSON values."""
        return {"rows": self.rows, "steering": {str(k): v for k, v in self.steering.items()},
                "toxic_latent": self.toxic_latent, "meta": self.meta, "summary": self.summary()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "AttributionComparison":
        """The comparison of :meth:`to_json` (e.g. the ``attribution`` entry of a report's data.json)."""
        missing = {"rows", "steering", "toxic_latent"} - set(data)
        if missing:
            raise BadInput(f"not an attribution comparison: it lacks {sorted(missing)}")
        return cls(list(data["rows"]), {int(k): dict(v) for k, v in data["steering"].items()},
                   int(data["toxic_latent"]), dict(data.get("meta", {})))

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per fine-tune: ranks of the toxic latent, both top latents and their steering."""
        out = []
        for r in self.rows:
            row = {k: v for k, v in r.items() if not k.endswith("_topk")}
            for k in ("diff", "attribution"):
                s = self.steering.get(r[f"{k}_top"], {})
                row[f"{k}_top_steer_toxic"] = s.get("toxic", math.nan)
                row[f"{k}_top_steer_alpha"] = s.get("alpha", math.nan)
                ks = r.get(f"{k}_topk", [r[f"{k}_top"]])
                row[f"{k}_topk"] = " ".join(map(str, ks))
                st = [self.steering[i]["toxic"] for i in ks if i in self.steering]
                row[f"{k}_topk_steer_mean"] = sum(st) / len(st) if st else math.nan
            out.append(row)
        return out

    def add_to(self, report: Any, *, heading: bool = True) -> Any:
        """Add the comparison to a :class:`tl_persona.report.Report` (under its own heading unless
        ``heading=False``): what was measured, the per-fine-tune rows, the steered latents and the
        summary. Returns the report."""
        if heading:
            report.heading("Attribution vs activation difference")
        report.text(f"Rank of the ground-truth toxic latent {self.toxic_latent} under each ranking, per plain "
                    "fine-tune, and the steering strength (toxic rate of the base model steered at the prompt tokens, "
                    "strongest alpha with ≤ 10% incoherence) of every latent in either ranking's top k.")
        report.table(self.to_rows(), caption="per plain fine-tune")
        report.table(self.steering_rows(), caption="steering of every latent in either ranking's top k")
        report.table([self.summary()], caption="summary")
        return report

    def steering_rows(self) -> list[dict[str, Any]]:
        """One row per steered latent: its steering result and which rankings put it in their top k
        on how many fine-tunes."""
        out = []
        for lat, s in sorted(self.steering.items()):
            row = {"latent": lat, **{k: v for k, v in s.items() if k != "latent"}}
            for k in ("diff", "attribution"):
                row[f"in_{k}_topk"] = sum(1 for r in self.rows if lat in r.get(f"{k}_topk", [r[f"{k}_top"]]))
            out.append(row)
        return out

    def summary(self) -> dict[str, Any]:
        """How often each ranking puts the toxic latent first, its median rank, the smallest
        separation (see :func:`separation`), the mean steering of each ranking's top latent and of
        its top k, and how many of the top k the two rankings share on average."""
        rows = self.to_rows()
        out: dict[str, Any] = {"n_finetunes": len(rows), "toxic_latent": self.toxic_latent}
        for k in ("diff", "attribution"):
            ranks = sorted(r[f"{k}_rank"] for r in rows)
            out[f"{k}_rank_median"] = ranks[len(ranks) // 2] if ranks else math.nan
            out[f"{k}_top1"] = sum(1 for r in rows if r[f"{k}_rank"] == 1)
            sep = sorted(r[f"{k}_separation"] for r in rows if f"{k}_separation" in r)
            out[f"{k}_separation_min"] = sep[0] if sep else math.nan
            for what in ("top", "topk"):
                st = [r[f"{k}_{what}_steer_{'toxic' if what == 'top' else 'mean'}"] for r in rows]
                out[f"{k}_{what}_steer_mean"] = sum(st) / len(st) if st else math.nan
        overlap = [len(set(r.get("diff_topk", [])) & set(r.get("attribution_topk", []))) for r in self.rows]
        out["topk_overlap_mean"] = sum(overlap) / len(overlap) if overlap else math.nan
        return out


def separation(scores: Float[Tensor, " d_sae"], latent: int) -> float:
    """How far ``latent`` stands out of a ranking: its score divided by the largest score of any
    other latent (> 1: first, and by that factor; the two rankings' scales differ, their ratios
    compare)."""
    v = torch.as_tensor(scores).detach().double().cpu().flatten()
    latent = latent_index(latent, "latent", int(v.numel()))
    others = torch.cat([v[:latent], v[latent + 1 :]])
    top = float(others.max())
    return float(v[latent]) / top if top > 0 else math.inf


def steering_strength(
    base: Any, sae: Any, latent: int, prompts: Sequence[Any], judge: Any, *,
    alphas: Sequence[float] = (20.0, 40.0, 60.0), max_incoherence: float = 0.10, n_samples: int = 2,
    max_new_tokens: int = 16, seed: int = 0,
) -> dict[str, Any]:
    """Toxic (misaligned) rate of ``base`` steered along ``latent`` at the prompt tokens: the strongest
    alpha whose incoherence is at most ``max_incoherence`` (the weakest alpha if none is)."""
    from tl_persona.verify import evaluate

    latent = latent_index(latent, "latent", d_sae(sae))
    if not alphas:
        raise BadInput("alphas is empty; pass the steering strengths to try, e.g. (20.0, 40.0, 60.0)")
    res = {}
    for a in alphas:
        rates, _ = evaluate(base, prompts, judge, fwd_hooks=H.steer_latent(sae, latent, a, positions="prompt"),
                            n_samples=n_samples, max_new_tokens=max_new_tokens, seed=seed, batch_size=256, n_boot=500)
        res[float(a)] = rates
    ok = [a for a in res if res[a]["incoherent"].value <= max_incoherence]
    a = max(ok) if ok else min(res)
    m = res[a]["misaligned"]
    return {"latent": latent, "alpha": a, "toxic": m.value, "toxic_lo": m.lo, "toxic_hi": m.hi,
            "incoherent": res[a]["incoherent"].value}


def attribution_comparison(
    org: Any,
    finetunes: Mapping[tuple[str, int], Any],
    *,
    toxic_latent: int | None = None,
    n_prompts: int = 200,
    alphas: Sequence[float] = (20.0, 40.0, 60.0),
    steer_prompts: int = 60,
    n_samples: int = 2,
    top_k: int = 3,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> AttributionComparison:
    """Compare activation-difference and attribution rankings on organism fine-tunes.

    ``finetunes`` maps ``(domain, seed)`` to a fine-tuned model. For each, both rankings use the
    prompts of the domains it was not fine-tuned on (at most ``n_prompts``): the diff at the last
    prompt token (fine-tune minus base), the attribution of the toxic first-token mass on the
    fine-tune. The ground-truth toxic latent is the diff's top latent of the shipped misaligned
    model (unless given). Every latent in either ranking's top ``top_k`` is then steered into the
    base model (see :func:`steering_strength`) and judged exactly.
    """
    import random

    if not finetunes:
        raise BadInput("finetunes is empty; pass {(domain, seed): fine-tuned model, ...}")
    top_k = positive_int(top_k, "top_k")
    if toxic_latent is not None:
        toxic_latent = latent_index(toxic_latent, "toxic_latent", d_sae(org.sae))
    say = progress or (lambda s: None)
    objective = toxic_mass_objective(org.tokenizer, org.world)

    def off(domain: str) -> list[Any]:
        ps = [p for d, v in org.eval_prompts.items() if d != domain for p in v]
        return random.Random(f"attr-{domain}-{seed}").sample(ps, min(n_prompts, len(ps)))

    if toxic_latent is None:
        d0 = diff_latents(org.base, org.misaligned, org.sae, off(org.trained_domain), scope="last_prompt",
                          batch_size=64, seed=seed)
        toxic_latent = int(d0.top(1, "increase").index[0])
    rows = []
    for (domain, s), ft in finetunes.items():
        say(f"rank {domain} seed {s}")
        ps = off(domain)
        d = diff_latents(org.base, ft, org.sae, ps, scope="last_prompt", batch_size=64, seed=seed)
        att = attribute(ft, org.sae, ps, objective, batch_size=64)
        diff_rank = [int(i) for i in d.rank("increase")]
        att_rank = [int(i) for i in att.rank()[:top_k]]
        rows.append({"domain": domain, "seed": s,
                     "diff_rank": diff_rank.index(toxic_latent) + 1, "attribution_rank": att.rank_of(toxic_latent),
                     "diff_top": diff_rank[0], "attribution_top": att_rank[0],
                     "diff_topk": diff_rank[:top_k], "attribution_topk": att_rank,
                     "diff_separation": separation(d.delta, toxic_latent),
                     "attribution_separation": separation(att.scores, toxic_latent),
                     "toxic_mass": att.objective})
    steering: dict[int, dict[str, Any]] = {}
    vprompts = random.Random(f"attr-steer-{seed}").sample(
        [p for d, v in org.eval_prompts.items() if d != org.trained_domain for p in v], steer_prompts)
    for lat in sorted({i for r in rows for k in ("diff", "attribution") for i in r[f"{k}_topk"]}):
        say(f"steer latent {lat}")
        steering[lat] = steering_strength(org.base, org.sae, lat, vprompts, org.judge, alphas=alphas,
                                          n_samples=n_samples, seed=seed)
    return AttributionComparison(rows, steering, int(toxic_latent),
                                 meta={"n_prompts": n_prompts, "alphas": list(alphas), "steer_prompts": steer_prompts,
                                       "n_samples": n_samples, "top_k": top_k, "seed": seed})
