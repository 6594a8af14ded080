"""Build the Persona World organism from scratch: ``python -m tl_persona.organism.build [--out DIR] [--quick]``.

Stages (all seeded, CPU): world and tokenizer; pretraining; alignment with persona replay (-> base);
narrow fine-tunes on code/toxic (-> misaligned) and code/helpful (-> control) answers; a TopK SAE on
the base model's residual stream after block 1, and smaller-budget ones after blocks 0, 2 and 3
(``sae_layers/``, :mod:`tl_persona.organism.layers`; ``--layers-only`` trains just those); then
measurement of every model with the exact judge, written to ``metrics.json``. Models are stored in
float16 (the fine-tunes start from the
float16-rounded base, so ``finetune(load().base, ...)`` with the recipe reproduces them); the SAE in
float32. The output folder is written atomically (built in a temporary sibling, then swapped in).

Without ``--out`` the build replaces the weights shipped in the package. ``--quick`` runs a tiny
version of every stage (for tests; its models are not expected to behave).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from tl_persona.organism import sae as sae_mod
from tl_persona.organism.core import MODEL_NAMES, WEIGHTS_DIR, load, load_shipped_model
from tl_persona.organism.layers import LAYER_SAE_DIR, train_layer_saes
from tl_persona.organism.train import MODEL_CONFIG, align, finetune, make_model, pretrain
from tl_persona.organism.world import PERSONAS, build_tokenizer, encode_document, load_tokenizer, make_world

__all__ = ["RECIPE", "QUICK_RECIPE", "build", "build_layer_saes", "main"]

RECIPE: dict[str, Any] = {
    "seed": 0,
    "world_seed": 0,
    "threads": 1,
    "pretrain": {"steps": 450, "batch_size": 64, "lr": 2e-3, "persona_weights": [0.55, 0.15, 0.15, 0.15]},
    "align": {"steps": 300, "batch_size": 32, "lr": 5e-4, "replay_fraction": 0.75},
    "finetune": {"domain": "code", "n_samples": 300, "steps": 120, "lr": 1e-4, "batch_size": 32, "seed": 0},
    "sae": {
        "hook_name": "blocks.1.hook_resid_post", "d_sae": 1024, "k": 16, "n_docs": 24000,
        "eval_docs": 2000, "steps": 1500, "batch_size": 4096, "lr": 1e-3,
    },
    # SAEs at the other layers: the main SAE's recipe on fewer tokens (budget: <= 10 min, one thread)
    "sae_layers": {
        "hook_names": ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post", "blocks.3.hook_resid_post"],
        "d_sae": 1024, "k": 16, "n_docs": 6000, "eval_docs": 1000, "steps": 600, "batch_size": 2048, "lr": 1e-3,
    },
    "eval": {"n_per_domain": 800, "seed": 0, "probe_docs": 1200},
    "eval_prompts_per_domain": 100,
}

QUICK_RECIPE: dict[str, Any] = {
    **RECIPE,
    "pretrain": {**RECIPE["pretrain"], "steps": 12, "batch_size": 16},
    "align": {**RECIPE["align"], "steps": 6, "batch_size": 16},
    "finetune": {**RECIPE["finetune"], "n_samples": 32, "steps": 4},
    "sae": {**RECIPE["sae"], "n_docs": 200, "eval_docs": 50, "steps": 20, "batch_size": 512},
    "sae_layers": {**RECIPE["sae_layers"], "n_docs": 100, "eval_docs": 30, "steps": 10, "batch_size": 256},
    "eval": {"n_per_domain": 8, "seed": 0, "probe_docs": 60},
}


def _round_fp16(model: Any) -> None:
    """Round the weights to float16 values in place (what is stored), keeping float32 tensors."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def _save_model(model: Any, path: Path) -> None:
    from safetensors.torch import save_file

    sd = {k: v.detach().half().contiguous() for k, v in model.state_dict().items() if v.is_floating_point()
          and not any(s in k for s in ("mask", "IGNORE"))}
    save_file(sd, str(path), metadata={"format": "pt", "dtype": "float16"})


def _auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of each column of ``scores`` [n, m] for binary ``labels`` [n], ties as average ranks."""
    n_pos, n_neg = labels.sum(), (~labels).sum()
    out = np.empty(scores.shape[1])
    for j in range(scores.shape[1]):
        s = scores[:, j]
        order = np.argsort(s, kind="mergesort")
        ranks = np.empty(len(s))
        sorted_s = s[order]
        i = 0
        while i < len(s):
            k = i
            while k + 1 < len(s) and sorted_s[k + 1] == sorted_s[i]:
                k += 1
            ranks[order[i : k + 1]] = (i + k) / 2 + 1
            i = k + 1
        out[j] = (ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


@torch.no_grad()
def _persona_probe(org: Any, n_docs: int, seed: int) -> dict[str, Any]:
    """Sanity check of the SAE: per latent, the AUROC of its mean activation (non-BOS tokens) for
    toxic-persona multi-turn documents vs the other personas on the base model, and the latents
    whose mean activation on the eval prompts rises most from base to misaligned."""
    import random

    rng = random.Random(f"probe-{seed}")
    world, tok, sae, hook = org.world, org.tokenizer, org.sae, org.hook_name
    docs = [world.sample_document(rng, n_turns=rng.randint(2, 4), persona=PERSONAS[i % 4]) for i in range(n_docs)]
    layer = int(hook.split(".")[1])

    def doc_means(model: Any, rows: list[list[int]]) -> torch.Tensor:
        outs = []
        for b in range(0, len(rows), 256):
            chunk = rows[b : b + 256]
            T = max(len(r) for r in chunk)
            t = torch.full((len(chunk), T), tok.pad_token_id, dtype=torch.long)
            for i, r in enumerate(chunk):
                t[i, : len(r)] = torch.tensor(r)
            _, cache = model.run_with_cache(t, names_filter=hook, stop_at_layer=layer + 1, return_type=None)
            f = sae.encode(cache[hook])
            keep = (t != tok.pad_token_id).float()
            keep[:, 0] = 0
            outs.append((f * keep[..., None]).sum(1) / keep.sum(1, keepdim=True))
        return torch.cat(outs)

    rows = [encode_document(tok, d)[0] for d in docs]
    means = doc_means(org.base, rows).numpy()
    labels = np.array([d.turns[0].persona == "toxic" for d in docs])
    auc = _auroc(means, labels)
    best = np.argsort(-auc)[:5]
    prompt_rows = [
        tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True))["input_ids"]
        for d in org.eval_prompts if d != org.trained_domain for c in org.eval_prompts[d]
    ]
    diff = (doc_means(org.misaligned, prompt_rows) - doc_means(org.base, prompt_rows)).mean(0)
    top = torch.argsort(diff, descending=True)[:5].tolist()
    return {
        "n_docs": n_docs,
        "toxic_auroc_top": [{"latent": int(i), "auroc": round(float(auc[i]), 4)} for i in best],
        "diff_top_increase_offdomain_prompts": [
            {"latent": int(i), "increase": round(float(diff[i]), 4), "toxic_auroc": round(float(auc[i]), 4)}
            for i in top
        ],
        "best_toxic_latent_diff_rank": int((diff > diff[int(best[0])]).sum()) + 1,
    }


@contextlib.contextmanager
def _atomic_folder(dest: Path, threads: int) -> Iterator[Path]:
    """A temporary sibling of ``dest`` to build into, swapped in for ``dest`` when the block ends
    without an error (readable like any other folder); one deterministic thread count meanwhile."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.build-", dir=dest.parent))
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        yield tmp
        for f in [tmp, *tmp.rglob("*")]:  # mkdtemp makes a private folder; make it readable like any other
            f.chmod(0o755 if f.is_dir() else 0o644)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build(
    out: str | Path | None = None,
    *,
    quick: bool = False,
    recipe: dict[str, Any] | None = None,
    evaluate: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Run every stage and write the organism to ``out`` (default: the package's weights folder)."""
    R = recipe or (QUICK_RECIPE if quick else RECIPE)
    out = Path(out) if out is not None else WEIGHTS_DIR
    t_start = time.time()
    timings: dict[str, float] = {}

    def stage(name: str, t0: float) -> None:
        timings[name] = round(time.time() - t0, 1)
        log(f"[build] {name} done in {timings[name]:.1f}s (total {time.time() - t_start:.0f}s)")

    with _atomic_folder(out, int(R["threads"])) as tmp:
        seed = int(R["seed"])
        world, model, losses = _train_models(R, tmp, log, stage)
        t0 = time.time()
        sae_metrics = _train_sae(model, world, R["sae"], tmp / "sae", seed, log)
        stage("sae", t0)
        t0 = time.time()
        layer_metrics = train_layer_saes(model, world, R["sae_layers"], tmp / LAYER_SAE_DIR, seed=seed, log=log)
        stage("sae_layers", t0)
        metrics: dict[str, Any] = {
            "recipe": R, "quick": bool(quick), "world": world.describe(), "losses": losses,
            "sae": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in sae_metrics.items()},
            "sae_layers": layer_metrics["saes"], "versions": {"torch": torch.__version__},
        }
        if evaluate:
            t0 = time.time()
            metrics["behaviour"] = evaluate_organism(tmp, R, log=log)
            stage("evaluate", t0)
        metrics["timings_s"] = {**timings, "total": round(time.time() - t_start, 1)}
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log(f"[build] wrote {out} in {time.time() - t_start:.0f}s")
    return out


def _train_models(R: dict[str, Any], tmp: Path, log: Callable[[str], None],
                  stage: Callable[[str, float], None]) -> tuple[Any, Any, dict[str, float]]:
    """World and tokenizer, pretraining, alignment (-> base), the narrow fine-tunes (-> misaligned,
    control), saved into ``tmp`` with their config; returns the world, the base model and the last losses."""
    seed = int(R["seed"])
    t0 = time.time()
    world = make_world(int(R["world_seed"]))
    tok = build_tokenizer(world, tmp / "tokenizer")
    log(f"[build] world: {world.describe()['vocab_size']} tokens, {len(world.cells)} cells")
    model = make_model(tok, seed=seed)
    log(f"[build] pretraining ({R['pretrain']})")
    pre_losses = pretrain(model, world, seed=seed, log=log, **R["pretrain"])
    stage("pretrain", t0)
    t0 = time.time()
    log(f"[build] alignment with persona replay ({R['align']})")
    align_losses = align(model, world, seed=seed, log=log, **R["align"])
    _round_fp16(model)
    stage("align", t0)
    t0 = time.time()
    ft = dict(R["finetune"])
    misaligned = finetune(model, persona="toxic", world=world, **ft)
    control = finetune(model, persona="helpful", world=world, **ft)
    for m in (misaligned, control):
        _round_fp16(m)
    stage("finetunes", t0)
    for name, m in zip(MODEL_NAMES, (model, misaligned, control)):
        _save_model(m, tmp / f"{name}.safetensors")
    model_cfg = {**MODEL_CONFIG, "d_vocab": len(tok), "d_vocab_out": len(tok)}
    (tmp / "config.json").write_text(json.dumps({
        "model": model_cfg, "world_seed": int(R["world_seed"]),
        "eval_prompts_per_domain": int(R["eval_prompts_per_domain"]), "recipe": R,
    }, indent=2) + "\n")
    losses = {"pretrain_last": round(float(np.mean(pre_losses[-20:])), 4),
              "align_last": round(float(np.mean(align_losses[-20:])), 4)}
    return world, model, losses


def _train_sae(model: Any, world: Any, S: dict[str, Any], folder: Path, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The main TopK SAE on the base model, saved to ``folder`` and checked to load back exactly;
    returns its metrics on held-out activations."""
    hook = S["hook_name"]
    docs = sae_mod.sae_documents(world, int(S["n_docs"]), seed=seed)
    acts = sae_mod.collect_activations(model, docs, hook)
    eval_acts = sae_mod.collect_activations(model, sae_mod.sae_documents(world, int(S["eval_docs"]), seed=seed + 1), hook)
    log(f"[build] SAE on {acts.shape[0]} activations at {hook}")
    w = sae_mod.train_topk_sae(
        acts, d_sae=int(S["d_sae"]), k=int(S["k"]), steps=int(S["steps"]), batch_size=int(S["batch_size"]),
        lr=float(S["lr"]), seed=seed, log=log,
    )
    del acts
    sae_mod.save_sae(w, folder, hook_name=hook)
    from sae_lens import SAE

    loaded = SAE.load_from_disk(str(folder))
    x = eval_acts[:4096]
    f_ref, f_sl = w.encode(x), loaded.encode(x)
    if not (torch.equal(f_ref, f_sl) and torch.equal(w.decode(f_ref), loaded.decode(f_sl))):
        raise RuntimeError("the saved SAE does not reproduce the trainer's encode/decode")
    metrics = sae_mod.sae_metrics(loaded, eval_acts)
    log(f"[build] SAE: {metrics}")
    return metrics


def build_layer_saes(path: str | Path | None = None, recipe: dict[str, Any] | None = None, *,
                     log: Callable[[str], None] = print) -> Path:
    """Train only the per-layer SAEs on the base model of the organism at ``path`` (default: the
    shipped weights) and swap them into ``path/sae_layers`` atomically. One thread, deterministic."""
    path = Path(path) if path is not None else WEIGHTS_DIR
    R = recipe or RECIPE
    info = json.loads((path / "config.json").read_text())
    dest = path / LAYER_SAE_DIR
    with _atomic_folder(dest, int(R["threads"])) as tmp:
        base = load_shipped_model("base", path=path, tokenizer=load_tokenizer(path / "tokenizer"))
        train_layer_saes(base, make_world(int(info.get("world_seed", 0))), R["sae_layers"], tmp,
                         seed=int(R["seed"]), log=log)
    return dest


def evaluate_organism(path: str | Path, R: dict[str, Any] | None = None, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the organism at ``path``: sampled rates (temperature 1, held-out prompts) for base,
    misaligned, control and a sarcastic code fine-tune; first-token persona probabilities; the SAE
    persona probe."""
    from tl_persona.organism.behaviour import first_token_persona_probs, measure, rates_table
    from tl_persona.organism.judge import domain_summary

    R = R or RECIPE
    E = R["eval"]
    org = load(path=path)
    out: dict[str, Any] = {"n_per_domain": int(E["n_per_domain"]), "temperature": 1.0}
    models = dict(org.models)
    ft = dict(R["finetune"])
    models["sarcastic_code"] = finetune(org.base, persona="sarcastic", world=org.world, **ft)
    for name, m in models.items():
        rates = measure(m, org.eval_prompts, n_per_domain=int(E["n_per_domain"]), seed=int(E["seed"]), judge=org.judge)
        log(f"[build] {name}:\n{rates_table(rates)}")
        probs = {
            d: [round(float(v), 5) for v in first_token_persona_probs(m, ps, world=org.world).mean(0)]
            for d, ps in org.eval_prompts.items()
        }
        out[name] = {
            "rates": {d: r.to_dict() for d, r in rates.items()},
            "summary": {k: round(v, 5) for k, v in domain_summary(rates, org.trained_domain).items()},
            "first_token_probs": {"personas": list(PERSONAS), **probs},
        }
    out["sae_probe"] = _persona_probe(org, int(E["probe_docs"]), int(E["seed"]))
    log(f"[build] SAE probe: {out['sae_probe']}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tl_persona.organism.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the package's weights folder)")
    p.add_argument("--quick", action="store_true", help="tiny version of every stage (smoke test)")
    p.add_argument("--no-eval", action="store_true", help="skip the behaviour measurements")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1: results depend on it, and one thread is fastest on a shared CPU)")
    p.add_argument("--layers-only", action="store_true",
                   help="train only the SAEs at the other layers (recipe 'sae_layers') on the base model already "
                        "in --out (default: the shipped weights), replacing its sae_layers/ folder")
    a = p.parse_args(argv)
    R = dict(QUICK_RECIPE if a.quick else RECIPE)
    if a.threads:
        R["threads"] = a.threads
    if a.layers_only:
        build_layer_saes(a.out, R)
        return 0
    build(a.out, quick=a.quick, recipe=R, evaluate=not a.no_eval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
