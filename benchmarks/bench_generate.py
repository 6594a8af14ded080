"""Benchmark of tl_persona.evals.generate.sample (batched chat sampling under hooks) in one run.

Setup (no downloads; random weights built from configs, float32, greedy decoding): a GPT-2-shaped
``HookedTransformer`` (LayerNorm, learned positions, BOS) and a Qwen2-shaped one (grouped-query
attention, rotary, RMSNorm, gated MLP, no BOS), with byte-level BPE tokenizers trained in-process
(Llama-3 and ChatML chat templates; the model's vocabulary may be larger than the tokenizer's).
``--kind bridge`` runs the same shapes as ``TransformerBridge`` (GPT2LMHeadModel / Qwen2ForCausalLM
saved from configs). Prompts: ``--prompts`` chat conversations (system prompts, multi-turn) of
``--min-tokens`` to ``--max-tokens`` tokens (uniform), ``--new-tokens`` new tokens each, a steering
hook (``tl_persona.hooks.steer``, positions="prompt") at the middle layer's residual stream.

Three ways to answer every prompt:

(a) ``sample(model, convs, temperature=0, fwd_hooks=steer, batch_size=B)``: chat formatting,
    tokenization, length-sorted left-padded batches, decoding, all included;
(b) TransformerLens ``model.generate`` one prompt at a time under the same hook (pre-tokenized);
(c) bare ``model.generate`` on the very batches (a) runs, left-padded, with no hook (pre-tokenized).

(a), (b) and (c) take turns, and the whole measurement is repeated ``--repeats`` times (3);
the table gives medians (wall clock and process CPU time) and throughput ratios. The benchmark also
checks that (a) and (b) give the same answers (greedy: they must).

    python benchmarks/bench_generate.py --quick              # a small run (1-2 minutes on 2 CPU cores)
    python benchmarks/bench_generate.py                      # CPU default (scaled-down models)
    python benchmarks/bench_generate.py --size full --device cuda   # GPT-2-small and Qwen2.5-0.5B shapes

Sizes: ``--size cpu`` (the CPU default) scales both models down (4 layers, d_model 256, vocabulary
8,192) so that 256 prompts finish on 2 cores; ``--size full`` (the CUDA default) is GPT-2 small
(12 x 768, 12 heads, d_mlp 3072, vocabulary 50,257) and Qwen2.5-0.5B (24 x 896, 14 heads, 2 KV
heads, d_mlp 4864, vocabulary 151,936). ``--layers``, ``--d-model``, ``--heads``, ``--kv-heads``,
``--d-mlp``, ``--vocab`` override both models' presets.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

PRESETS = {
    "cpu": {
        "gpt2": dict(layers=4, d_model=256, heads=4, kv_heads=4, d_mlp=1024, vocab=8192),
        "qwen2": dict(layers=4, d_model=256, heads=4, kv_heads=2, d_mlp=768, vocab=8192),
    },
    "full": {
        "gpt2": dict(layers=12, d_model=768, heads=12, kv_heads=12, d_mlp=3072, vocab=50257),
        "qwen2": dict(layers=24, d_model=896, heads=14, kv_heads=2, d_mlp=4864, vocab=151936),
    },
}


# ----------------------------------------------------------------------------- setup
def build(arch: str, size: dict, kind: str, device: str, n_ctx: int):
    """A random model of ``arch`` ("gpt2" or "qwen2") with its BPE chat tokenizer."""
    from tl_persona import testing as T

    tok = T.bpe_tokenizer(chat="llama3" if arch == "gpt2" else "chatml", vocab_size=4096)
    vocab = max(size["vocab"], len(tok))
    torch.manual_seed(0)
    if kind == "hooked":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        common = dict(
            n_layers=size["layers"], d_model=size["d_model"], n_heads=size["heads"], d_head=size["d_model"] // size["heads"],
            d_mlp=size["d_mlp"], d_vocab=vocab, n_ctx=n_ctx, device=device, seed=0,
        )
        if arch == "gpt2":
            cfg = HookedTransformerConfig(**common, act_fn="gelu_new", normalization_type="LN", default_prepend_bos=True)
        else:
            cfg = HookedTransformerConfig(
                **common, n_key_value_heads=size["kv_heads"], act_fn="silu", normalization_type="RMS",
                positional_embedding_type="rotary", gated_mlp=True, final_rms=True, default_prepend_bos=False,
                original_architecture="Qwen2ForCausalLM", eps=1e-6,
            )
        return HookedTransformer(cfg, tokenizer=tok, move_to_device=True).eval()
    from transformer_lens.model_bridge import TransformerBridge

    folder = tempfile.mkdtemp(prefix=f"bench_generate_{arch}_")
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        GPT2LMHeadModel(GPT2Config(
            n_layer=size["layers"], n_embd=size["d_model"], n_head=size["heads"], n_inner=size["d_mlp"],
            vocab_size=vocab, n_positions=n_ctx, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        )).save_pretrained(folder)
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        Qwen2ForCausalLM(Qwen2Config(
            vocab_size=vocab, hidden_size=size["d_model"], intermediate_size=size["d_mlp"],
            num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
            num_key_value_heads=size["kv_heads"], max_position_embeddings=n_ctx, tie_word_embeddings=False,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )).save_pretrained(folder)
    tok.save_pretrained(folder)
    return TransformerBridge.boot_transformers(folder, device=device).eval()


def chat_convs(model, n: int, lo: int, hi: int, seed: int = 0) -> list[list[dict]]:
    """``n`` conversations whose templated token lengths are spread uniformly over [lo, hi]."""
    from tl_persona import testing as T
    from tl_persona.models import as_adapter

    ad = as_adapter(model)
    rng = random.Random(seed)
    bases = T.chat_prompts(n, seed=seed, min_words=1, max_words=8)
    out = []
    for conv in bases:
        target = rng.randint(lo, hi)
        conv = [dict(m) for m in conv]
        words = conv[-1]["content"].split()
        length = lambda: len(ad.encode_text(ad.format_chat(conv)))  # noqa: E731
        while length() < target:  # grow the last user message
            words += [rng.choice(T.ENGLISH) for _ in range(max(1, (target - length()) // 2))]
            conv[-1]["content"] = " ".join(words)
        while length() > target and len(words) > 1:
            words.pop()
            conv[-1]["content"] = " ".join(words)
        out.append(conv)
    return out


# ----------------------------------------------------------------------------- the three ways
def run_a(model, convs, hooks, args):
    from tl_persona.evals.generate import sample

    return sample(model, convs, temperature=0, max_new_tokens=args.new_tokens, batch_size=args.batch_size, fwd_hooks=hooks)


def _gen(model, toks, args, **kw):
    eos = model.tokenizer.eos_token_id
    return model.generate(toks, max_new_tokens=args.new_tokens, do_sample=False, stop_at_eos=True, eos_token_id=eos,
                          use_past_kv_cache=True, verbose=False, return_type="tokens", **kw)


def run_b(model, rows, hooks, args):
    out = []
    dev = next(model.parameters()).device
    with model.hooks(fwd_hooks=hooks):
        for r in rows:
            toks = torch.tensor([r], device=dev)
            kw = {"attention_mask": torch.ones_like(toks)} if hasattr(model, "original_model") else {}
            out.append(_gen(model, toks, args, **kw)[0, len(r):].tolist())
    return out


def padded_batches(model, rows, args):
    """The left-padded batches sample() runs (same plan), pre-built."""
    from tl_persona.evals.generate import plan_batches

    dev = next(model.parameters()).device
    pad = model.tokenizer.pad_token_id
    out = []
    for chunk in plan_batches([len(r) for r in rows], args.batch_size):
        seqs = [rows[k] for k in chunk]
        w = max(map(len, seqs))
        toks = torch.full((len(seqs), w), pad, dtype=torch.long)
        am = torch.zeros_like(toks)
        for b, r in enumerate(seqs):
            toks[b, w - len(r):] = torch.tensor(r)
            am[b, w - len(r):] = 1
        out.append((toks.to(dev), am.to(dev)))
    return out


def run_c(model, batches, args):
    bridge = hasattr(model, "original_model")
    for toks, am in batches:
        _gen(model, toks, args, **({"attention_mask": am} if bridge else {"padding_side": "left"}))


def decode(model, seq):
    eos = model.tokenizer.eos_token_id
    seq = seq[: seq.index(eos)] if eos in seq else seq
    return model.tokenizer.decode(seq, skip_special_tokens=True).strip()


# ----------------------------------------------------------------------------- main
def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    w, c = time.perf_counter(), time.process_time()
    res = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return res, time.perf_counter() - w, time.process_time() - c


def bench(arch: str, args) -> dict:
    from tl_persona import hooks as H
    from tl_persona.models import as_adapter

    size = dict(PRESETS[args.size][arch])
    for k in ("layers", "d_model", "heads", "kv_heads", "d_mlp", "vocab"):
        if getattr(args, k) is not None:
            size[k] = getattr(args, k)
    if arch == "gpt2":
        size["kv_heads"] = size["heads"]
    n_ctx = args.max_tokens + args.new_tokens + 8
    model = build(arch, size, args.kind, args.device, n_ctx)
    ad = as_adapter(model)
    convs = chat_convs(model, args.prompts, args.min_tokens, args.max_tokens)
    rows = [ad.encode_text(ad.format_chat(c)) for c in convs]
    lens = [len(r) for r in rows]
    g = torch.Generator().manual_seed(1)
    hook = ad.resid_hook(size["layers"] // 2, "pre")
    hooks = H.steer(hook, torch.randn(ad.d_model, generator=g), 0.5, scale="resid_norm", positions="prompt")
    batches = padded_batches(model, rows, args)
    # warm-up (allocator, kernels, lazy init), not timed
    run_a(model, convs[:2], hooks, args)
    run_b(model, rows[:1], hooks, args)
    run_c(model, batches[-1:], args)
    times: dict[str, list[tuple[float, float]]] = {"a": [], "b": [], "c": []}
    same = None
    for rep in range(args.repeats):
        a, wa, ca = timed(lambda: run_a(model, convs, hooks, args), args.device)
        times["a"].append((wa, ca))
        if not args.skip_b:
            b, wb, cb = timed(lambda: run_b(model, rows, hooks, args), args.device)
            times["b"].append((wb, cb))
            if rep == 0:
                same = sum(x == decode(model, y) for x, y in zip(a, b))
        _, wc, cc = timed(lambda: run_c(model, batches, args), args.device)
        times["c"].append((wc, cc))
        print(f"  {arch} repeat {rep + 1}: (a) {wa:.1f}s  (b) {times['b'][-1][0] if times['b'] else float('nan'):.1f}s  (c) {wc:.1f}s",
              flush=True)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) if v else (float("nan"),) * 2
           for k, v in times.items()}
    n_new = args.prompts * args.new_tokens
    return dict(arch=arch, size=size, lens=lens, med=med, n_new=n_new, same=same, n_batches=len(batches),
                padded=sum(t.numel() for t, _ in batches), real=sum(lens))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", choices=list(PRESETS), default=None, help="model sizes (default: cpu on CPU, full on CUDA)")
    ap.add_argument("--kind", choices=["hooked", "bridge"], default="hooked", help="HookedTransformer or TransformerBridge")
    ap.add_argument("--models", default="gpt2,qwen2", help="comma-separated: gpt2, qwen2")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--min-tokens", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on shared, busy cores more threads spin-wait on each other)")
    ap.add_argument("--skip-b", action="store_true", help="skip the one-prompt-at-a-time baseline")
    ap.add_argument("--quick", action="store_true", help="a small run: 32 prompts of 16-128 tokens, 16 new, 2-layer models")
    for k in ("layers", "d-model", "heads", "kv-heads", "d-mlp", "vocab"):
        ap.add_argument(f"--{k}", type=int, default=None, help="override both models' preset")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.max_tokens, args.new_tokens = 32, 128, 16
        args.layers = args.layers or 2
    args.size = args.size or ("full" if args.device == "cuda" else "cpu")
    torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    import warnings

    warnings.filterwarnings("ignore")

    cmd = "python benchmarks/bench_generate.py " + " ".join(sys.argv[1:])
    print(f"# {cmd}\n# torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, kind {args.kind}",
          flush=True)
    results = [bench(a.strip(), args) for a in args.models.split(",") if a.strip()]
    print()
    print("| model | shape | prompts (tokens) | batches, padding | (a) sample | (b) generate 1-by-1 | (c) bare batched generate | (a)/(b) | (a)/(c) | (a) = (b) answers |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s, m = r["size"], r["med"]
        shape = f"{s['layers']}x{s['d_model']}, {s['heads']}/{s['kv_heads']} heads, mlp {s['d_mlp']}, vocab {s['vocab']}"
        tps = {k: r["n_new"] / m[k][0] for k in m}
        cpu = {k: r["n_new"] / m[k][1] if m[k][1] > 0 else float("nan") for k in m}
        cell = lambda k: f"{m[k][0]:.1f} s, {tps[k]:.1f} tok/s"  # noqa: E731
        ratio = lambda k: f"**{tps['a'] / tps[k]:.2f}x** (cpu {cpu['a'] / cpu[k]:.2f}x)"  # noqa: E731
        same = f"{r['same']}/{len(r['lens'])}" if r["same"] is not None else "-"
        print(f"| {r['arch']} | {shape} | {len(r['lens'])} ({min(r['lens'])}-{max(r['lens'])}, {len(set(r['lens']))} lengths) "
              f"| {r['n_batches']}, {r['padded'] / r['real'] - 1:.1%} | {cell('a')} | {cell('b')} | {cell('c')} "
              f"| {ratio('b')} | {ratio('c')} | {same} |")
    print(f"\nMedians of {args.repeats} repeats (wall clock; tok/s = new tokens per second, "
          f"{args.new_tokens} per prompt; cpu = the same ratio in process CPU time).")


if __name__ == "__main__":
    main()
