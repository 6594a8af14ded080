"""SAEs at every layer of the organism, and the layer profile of the toxic persona.

The build ships one TopK SAE at ``blocks.1.hook_resid_post`` (``weights/sae``) and, with the same
recipe family on fewer tokens, one at each other block's residual output
(``weights/sae_layers/<hook>/``, metrics in ``weights/sae_layers/metrics.json``).
:func:`load_layer_saes` puts them all in ``org.saes`` (hook -> SAE-Lens SAE, the layer-1 entry is
``org.sae`` itself); :func:`layer_diffs` diffs base and misaligned with all of them in one pass
(a :class:`~tl_persona.diff.LatentDiffSet`), and :func:`persona_layer_profile` adds, for each layer's
top latent, how well it separates toxic-persona chats on the base model (AUROC).

>>> from tl_persona import organism
>>> org = organism.load()
>>> diffs = organism.layer_diffs(org)                 # non-code eval prompts, last prompt token
>>> diffs.layer_profile()                             # one row per layer: top latent, delta, CI
>>> organism.persona_layer_profile(org, diffs)        # ... plus the toxic-persona AUROC
>>> fig = diffs.plot_layer_profile()

Train only these SAEs on the shipped base model: ``python -m tl_persona.organism.build --layers-only`` (:func:`tl_persona.organism.build.build_layer_saes`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tl_persona.organism.world import Document, World, encode_document

__all__ = [
    "LAYER_SAE_DIR",
    "collect_layer_activations",
    "train_layer_saes",
    "load_layer_saes",
    "layer_diffs",
    "persona_layer_profile",
]

LAYER_SAE_DIR = "sae_layers"
"""Folder (under the weights folder) of the SAEs at the layers other than the main SAE's."""


@torch.no_grad()
def collect_layer_activations(
    model: Any, docs: Sequence[Document], hook_names: Sequence[str], *, batch_size: int = 256
) -> dict[str, Float[Tensor, "n d_model"]]:
    """Residual activations at each of ``hook_names`` on every non-BOS token of ``docs``, from one
    forward pass per batch stopped after the deepest hook. Documents are batched by length (less
    padding); rows come in that (deterministic) order, the same for every hook."""
    tok = model.tokenizer
    hooks = list(hook_names)
    deepest = max(int(h.split(".")[1]) for h in hooks)
    rows = sorted((encode_document(tok, d)[0] for d in docs), key=len)
    out: dict[str, list[Tensor]] = {h: [] for h in hooks}
    for b in range(0, len(rows), batch_size):
        chunk = rows[b : b + batch_size]
        T = max(len(r) for r in chunk)
        tokens = torch.full((len(chunk), T), tok.pad_token_id, dtype=torch.long)
        for i, r in enumerate(chunk):
            tokens[i, : len(r)] = torch.tensor(r)
        _, cache = model.run_with_cache(tokens, names_filter=hooks, stop_at_layer=deepest + 1, return_type=None)
        keep = tokens != tok.pad_token_id
        keep[:, 0] = False  # BOS
        for h in hooks:
            out[h].append(cache[h][keep].float())
    return {h: torch.cat(v) for h, v in out.items()}


def _round(m: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in m.items()}


def train_layer_saes(
    model: Any,
    world: World,
    S: dict[str, Any],
    out: str | Path,
    *,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one TopK SAE per hook of ``S["hook_names"]`` on ``model`` (the base) and write them to
    ``out/<hook>/`` (SAE-Lens format) with ``out/metrics.json``; returns those metrics.

    ``S`` is the build recipe's ``"sae_layers"`` entry: the main SAE's recipe (``d_sae``, ``k``,
    ``lr``) on ``n_docs`` training documents for ``steps`` x ``batch_size``, evaluated on
    ``eval_docs`` held-out documents (:func:`~tl_persona.organism.sae.sae_metrics`). Each saved SAE is
    checked to reproduce the trainer's encode/decode exactly.
    """
    from sae_lens import SAE

    from tl_persona.organism import sae as sae_mod

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hooks = list(S["hook_names"])
    t0 = time.time()
    acts = collect_layer_activations(model, sae_mod.sae_documents(world, int(S["n_docs"]), seed=seed), hooks)
    eval_acts = collect_layer_activations(model, sae_mod.sae_documents(world, int(S["eval_docs"]), seed=seed + 1), hooks)
    timings = {"collect": round(time.time() - t0, 1)}
    log(f"[build] layer SAEs: {acts[hooks[0]].shape[0]} training activations per hook in {timings['collect']:.0f}s")
    per_hook: dict[str, Any] = {}
    n_train = int(acts[hooks[0]].shape[0])
    for h in hooks:
        t1 = time.time()
        log(f"[build] SAE at {h}")
        w = sae_mod.train_topk_sae(
            acts.pop(h), d_sae=int(S["d_sae"]), k=int(S["k"]), steps=int(S["steps"]),
            batch_size=int(S["batch_size"]), lr=float(S["lr"]), seed=seed, log=log,
        )
        sae_mod.save_sae(w, out / h, hook_name=h)
        loaded = SAE.load_from_disk(str(out / h))
        x = eval_acts[h][:4096]
        f_ref, f_sl = w.encode(x), loaded.encode(x)
        if not (torch.equal(f_ref, f_sl) and torch.equal(w.decode(f_ref), loaded.decode(f_sl))):
            raise RuntimeError(f"the saved SAE at {h} does not reproduce the trainer's encode/decode")
        per_hook[h] = {**_round(sae_mod.sae_metrics(loaded, eval_acts[h])), "n_train_tokens": n_train}
        timings[h] = round(time.time() - t1, 1)
        log(f"[build] SAE at {h}: {per_hook[h]} ({timings[h]:.0f}s)")
    metrics = {"recipe": dict(S), "seed": int(seed), "saes": per_hook,
               "timings_s": {**timings, "total": round(time.time() - t0, 1)},
               "threads": torch.get_num_threads(), "versions": {"torch": torch.__version__}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def load_layer_saes(path: str | Path, main_sae: Any, *, device: str = "cpu") -> dict[str, Any]:
    """Every shipped SAE by hook name, in layer order: ``main_sae`` (the object itself) at its hook
    plus each SAE under ``path/sae_layers`` (a few ms each; none when the folder is absent)."""
    from sae_lens import SAE

    saes = {str(main_sae.cfg.metadata.hook_name): main_sae}
    folder = Path(path) / LAYER_SAE_DIR
    if folder.is_dir():
        for sub in sorted(folder.iterdir()):
            if (sub / "cfg.json").exists():
                s = SAE.load_from_disk(str(sub), device=device)
                saes[str(s.cfg.metadata.hook_name)] = s
    return dict(sorted(saes.items(), key=lambda kv: int(kv[0].split(".")[1])))


def _default_prompts(org: Any) -> list[list[dict[str, str]]]:
    return [p for d, ps in org.eval_prompts.items() if d != org.trained_domain for p in ps]


def layer_diffs(
    org: Any,
    prompts: Any = None,
    *,
    scope: str = "last_prompt",
    saes: dict[str, Any] | None = None,
    batch_size: int = 64,
    per_prompt_top: int = 64,
    seed: int = 0,
) -> Any:
    """Base vs misaligned diff with every SAE of ``org.saes`` in one pass: a
    :class:`~tl_persona.diff.LatentDiffSet` keyed by hook. Default prompts: the held-out prompts of
    every domain but the fine-tuned one (400), at the last prompt token (where the answer starts).
    The same as ``diff_latents(org.base, org.misaligned, org.saes, prompts, scope=scope, ...)``."""
    from tl_persona.diff import diff_latents

    return diff_latents(org.base, org.misaligned, saes if saes is not None else org.saes,
                        _default_prompts(org) if prompts is None else prompts, scope=scope,  # type: ignore[arg-type]
                        batch_size=batch_size, per_prompt_top=per_prompt_top, seed=seed)


@torch.no_grad()
def persona_layer_profile(
    org: Any,
    diffs: Any = None,
    *,
    n_docs: int = 400,
    seed: int = 0,
    n_boot: int = 1000,
) -> Any:
    """``diffs.layer_profile()`` (default ``diffs``: :func:`layer_diffs`) with one more column,
    ``toxic_auroc``: how well each layer's top latent (mean at the last prompt token, base model)
    separates ``n_docs`` toxic-persona chats from chats of the other personas
    (:func:`tl_persona.organism.world.persona_documents`, a quarter toxic; 0.5 = no separation)."""
    import numpy as np

    from tl_persona.diff import collect
    from tl_persona.evals.metrics import auroc
    from tl_persona.organism.world import persona_documents

    diffs = layer_diffs(org) if diffs is None else diffs
    prof = diffs.layer_profile(n_boot=n_boot, seed=seed)
    convs, labels = persona_documents(org.world, n_docs, seed=seed)
    aucs = []
    for k, latent in zip(prof["sae"], prof["latent"]):
        sae = org.saes[str(diffs[k].meta.get("hook_name"))]
        st = collect(org.base, sae, convs, scope="last_prompt", batch_size=64, latents_per_prompt=[int(latent)])
        means = st.per_prompt.means().numpy()[:, 0]  # type: ignore[union-attr]
        y = labels[st.per_prompt.prompt_ids.numpy()]  # type: ignore[union-attr]
        aucs.append(float(auroc(np.nan_to_num(means), y)))
    prof["toxic_auroc"] = aucs
    return prof
