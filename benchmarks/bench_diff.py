"""Benchmark of tl_persona.diff.diff_latents against the two honest baselines, in one run.

Setup (no downloads): a GPT-2-small-shaped HookedSAETransformer with random weights (12 layers,
d_model 768, 12 heads, d_mlp 3072, vocabulary 50,257), a "fine-tuned" copy (small noise on every
weight plus a shift along a few latents' encoder directions), and a 24,576-latent ReLU SAE at
``blocks.6.hook_resid_pre`` whose biases are calibrated on sample activations for a realistic
sparsity (L0 about 110 on the benchmark prompts; a random SAE would fire on half its latents).
Prompts are random word sequences of 16 to 256 tokens.

Measured on the same prompts, same batch size:

(a) ``diff_latents(base, finetuned, sae, prompts, scope="all")``: tokenization included;
(b) the bare full forward pass of both models (logits) over the same padded batches (pre-tokenized);
(c) SAE-Lens ``HookedSAETransformer.run_with_cache_with_saes`` (caching only the SAE's latents)
    followed by a masked mean over positions, for both models (pre-tokenized).

Then the peak memory of (a) for N and 10 N prompts, each in a fresh subprocess (RSS on CPU,
``torch.cuda.max_memory_allocated`` on CUDA).

    python benchmarks/bench_diff.py                 # default: ~6k tokens; 2 min on 2 quiet cores, 7 on busy ones
    python benchmarks/bench_diff.py --tokens 200000 # the full-size run
    python benchmarks/bench_diff.py --device cuda --tokens 200000
    python benchmarks/bench_diff.py --layers 2,5,8,11  # k SAEs at k layers: one call vs single deepest vs k calls
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

HOOK = "blocks.6.hook_resid_pre"
D_SAE = 24576
VOCAB = 50257
TARGET_L0 = 64


# ----------------------------------------------------------------------------- setup
def build(device: str, seed: int = 0):
    """Base and fine-tuned GPT-2-small-shaped HookedSAETransformers, their tokenizer, and the SAE."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    from tl_persona.testing import word_tokenizer

    tok = word_tokenizer([f"w{i}" for i in range(VOCAB - 6)])  # 6 specials + words = 50,257
    cfg = HookedTransformerConfig(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=VOCAB, n_ctx=1024,
        act_fn="gelu_new", normalization_type="LN", seed=seed, default_prepend_bos=True, device=device,
    )
    base = HookedSAETransformer(cfg, tokenizer=tok).eval()
    g = torch.Generator().manual_seed(seed + 1)
    sae, W = make_sae(base, tok, HOOK, device, g)
    # Not copy.deepcopy(base): HookedSAETransformer's blocks hold closures over the original
    # model's MLPs, so a deep copy would silently run the base model's MLP weights.
    ft = HookedSAETransformer(cfg, tokenizer=tok).eval()
    ft.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.02 * p.std() * torch.randn(p.shape, generator=g).to(device))
        shift = (W[:8] * torch.linspace(8.0, 4.0, 8)[:, None]).sum(0).to(device)
        ft.blocks[5].mlp.b_out.add_(shift)
    return base, ft, tok, sae


def make_sae(base, tok, hook: str, device: str, g: torch.Generator, d_sae: int = D_SAE):
    """A ReLU SAE at ``hook`` whose encoder biases are calibrated on sample activations so that about
    TARGET_L0 latents fire per token (a random SAE would fire on half of its latents)."""
    from tl_persona.models import as_adapter
    from tl_persona.saes import sae_from_weights

    W = torch.randn(d_sae, 768, generator=g)
    W = W / W.norm(dim=-1, keepdim=True)
    sample = torch.randint(6, VOCAB, (16, 160), generator=g)
    sample[:, 0] = tok.bos_token_id
    with torch.no_grad():
        x = as_adapter(base).run_to_hook(sample.to(device), hook)[:, 1:].reshape(-1, 768).float().cpu()
        pre = x @ W.T  # [tokens, d_sae]
        k = max(1, round(pre.shape[0] * TARGET_L0 / d_sae))
        b_enc = -pre.topk(k + 1, dim=0).values[-1]  # per latent: fires on ~k of these tokens
        del pre, x
    sae = sae_from_weights(W.T.contiguous(), b_enc, W.clone(), torch.zeros(768), "relu", hook_name=hook).to(device)
    return sae, W


def multi_layer(args) -> None:
    """k SAEs at k layers in one diff_latents call vs (i) the single call at the deepest layer and
    (ii) k separate calls; three interleaved timings each, medians, and the FLOP arithmetic."""
    import statistics

    from tl_persona.diff import diff_latents

    hooks = [f"blocks.{int(la)}.hook_resid_pre" for la in args.layers.split(",")]
    base, ft, tok, _ = build(args.device)
    g = torch.Generator().manual_seed(11)
    saes = [make_sae(base, tok, h, args.device, g, args.d_sae)[0] for h in hooks]
    deepest = max(range(len(hooks)), key=lambda i: int(hooks[i].split(".")[1]))
    prompts = make_prompts(args.tokens)
    diff_latents(base, ft, saes, prompts[:2], scope="all", batch_size=args.batch_size)  # warm-up
    times: dict[str, list[float]] = {"one call, k SAEs": [], "single call, deepest SAE": [], "k separate calls": []}
    for r in range(3):
        with Timer(args.device) as t:
            ds = diff_latents(base, ft, saes, prompts, scope="all", batch_size=args.batch_size)
        times["one call, k SAEs"].append(t.wall)
        with Timer(args.device) as t:
            diff_latents(base, ft, saes[deepest], prompts, scope="all", batch_size=args.batch_size)
        times["single call, deepest SAE"].append(t.wall)
        with Timer(args.device) as t:
            sep = [diff_latents(base, ft, s, prompts, scope="all", batch_size=args.batch_size) for s in saes]
        times["k separate calls"].append(t.wall)
        print(f"  round {r + 1}/3: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()), flush=True)
    err = max(float((ds[h].delta - d.delta).abs().max()) for h, d in zip(ds, sep))
    med = {k: statistics.median(v) for k, v in times.items()}
    k = len(hooks)
    print(f"\n{k} SAEs of {args.d_sae} latents at {', '.join(hooks)}; {args.tokens} prompt tokens, device {args.device}")
    print("| run | median wall (s) | ratio to the single deepest call |\n|---|---|---|")
    for name, v in med.items():
        print(f"| {name} | {v:.1f} | {v / med['single call, deepest SAE']:.2f}x |")
    print(f"(one call)/(single deepest) = {med['one call, k SAEs'] / med['single call, deepest SAE']:.2f} (target <= 1.3); "
          f"(k separate)/(one call) = {med['k separate calls'] / med['one call, k SAEs']:.2f}x; "
          f"max |delta(one call) - delta(separate)| = {err:.1e}")
    depth = int(hooks[deepest].split(".")[1])
    fwd = 2 * depth * 12 * 768**2  # FLOPs per token and model up to the deepest hook (attention + MLP)
    enc = 2 * 768 * args.d_sae
    print(f"FLOPs per token and model: forward to layer {depth} {fwd / 1e6:.0f}M, one SAE encode {enc / 1e6:.0f}M; "
          f"expected ratio from FLOPs alone {(fwd + k * enc) / (fwd + enc):.2f}")


def make_prompts(n_tokens: int, seed: int = 0) -> list[str]:
    """Random word prompts of 16..256 tokens (BOS included) adding up to about ``n_tokens``."""
    rng = np.random.default_rng(seed)
    out, total = [], 0
    while total < n_tokens:
        n = int(rng.integers(16, 257))
        out.append(" ".join(f"w{i}" for i in rng.integers(0, VOCAB - 6, size=n - 1)))
        total += n
    return out


# ----------------------------------------------------------------------------- runs
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Timer:
    """Wall-clock and process CPU time (all threads) of a block. On a shared machine the CPU time is
    the steadier measure of work: time spent waiting for a core is not counted."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> "Timer":
        sync(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_a(base, ft, sae, prompts, batch_size, device):
    from tl_persona.diff import diff_latents

    with Timer(device) as t:
        d = diff_latents(base, ft, sae, prompts, scope="all", batch_size=batch_size)
    return t, d


def batches_for(base, prompts, batch_size):
    from tl_persona.data import as_prompt_set

    tp = as_prompt_set(prompts).tokenize(base)
    return [tp.make_batch(idx) for idx in tp.batch_plan(batch_size)]


def run_b(base, ft, batches, device):
    with Timer(device) as t, torch.no_grad():
        for pb in batches:
            for m in (base, ft):
                m(pb.tokens, return_type="logits")
    return t


def run_c(base, ft, sae, batches, device):
    name = f"{HOOK}.hook_sae_acts_post"
    sums = [torch.zeros(D_SAE, dtype=torch.float64, device=device) for _ in range(2)]
    n = 0
    with Timer(device) as t, torch.no_grad():
        for pb in batches:
            mask = (pb.batch.attention_mask & ~pb.batch.bos_mask).to(device)
            n += int(mask.sum())
            for i, m in enumerate((base, ft)):
                _, cache = m.run_with_cache_with_saes(pb.tokens, saes=[sae], names_filter=lambda k: k == name)
                acts = cache[name]
                sums[i] += (acts * mask[..., None]).sum((0, 1), dtype=torch.float64)
                del cache, acts
    return t, (sums[1] - sums[0]) / n


# ----------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) so that the peak of (a) alone is read (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(n_prompts: int, batch_size: int, device: str) -> None:
    """Run (a) once in this fresh process and print its memory as JSON (one thread: memory does not
    depend on it, and many small ops of two threads on two busy cores mostly wait for each other)."""
    torch.set_num_threads(1)
    base, ft, tok, sae = build(device)
    rng = np.random.default_rng(1)
    prompts = [" ".join(f"w{i}" for i in rng.integers(0, VOCAB - 6, size=int(rng.integers(8, 32))))
               for _ in range(n_prompts)]
    from tl_persona.diff import diff_latents  # imported before the reset: not part of (a)'s memory

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        start = rss_bytes()
        exact = reset_peak_rss()

    t = time.perf_counter()
    d = diff_latents(base, ft, sae, prompts, scope="all", batch_size=batch_size)
    dt = time.perf_counter() - t
    if device.startswith("cuda"):
        peak, exact = torch.cuda.max_memory_allocated(), True
    else:
        peak = peak_rss_bytes()  # the peak since the reset, i.e. during (a), when `exact`
    print(json.dumps({"n_prompts": n_prompts, "tokens": d.n_tokens, "start": start, "peak": peak, "seconds": dt,
                      "exact": exact}))


def measure_memory(n_prompts: int, batch_size: int, device: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(n_prompts), "--batch-size", str(batch_size), "--device", device],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=6000, help="total prompt tokens for the speed runs")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6, help="interleave a, b, c over this many parts of the prompts")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--memory-prompts", type=int, default=30, help="N for the memory runs (N and 10 N)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-c", action="store_true", help="skip the SAE-Lens baseline")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--layers", default=None, help="multi-layer case: comma-separated layers, one SAE each (e.g. 2,5,8,11)")
    ap.add_argument("--d-sae", type=int, default=D_SAE, help="latents per SAE in the multi-layer case")
    args = ap.parse_args()
    if args.layers:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)) if args.device == "cpu" else torch.get_num_threads())
        multi_layer(args)
        return
    if args.memory_child is not None:
        memory_child(args.memory_child, args.batch_size, args.device)
        return
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)) if args.device == "cpu" else torch.get_num_threads())
    t0 = time.perf_counter()
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")
    base, ft, tok, sae = build(args.device)
    prompts = make_prompts(args.tokens)
    R = max(1, min(args.rounds, len(prompts)))
    parts = [prompts[r::R] for r in range(R)]
    part_batches = [batches_for(base, p, args.batch_size) for p in parts]
    batches = [pb for pbs in part_batches for pb in pbs]
    n_tok = sum(int((pb.batch.attention_mask & ~pb.batch.bos_mask).sum()) for pb in batches)
    n_pad = sum(pb.tokens.numel() for pb in batches)
    print(f"setup {time.perf_counter() - t0:.1f}s; {len(prompts)} prompts of 16-256 tokens, {n_tok} counted tokens "
          f"({n_pad} padded positions per model), batch size {args.batch_size}, {R} interleaved rounds")
    # warm-up (allocator, kernels) on a few prompts
    run_a(base, ft, sae, prompts[:2], args.batch_size, args.device)
    run_b(base, ft, part_batches[0][-1:], args.device)
    wall = {"a": 0.0, "b": 0.0, "c": 0.0}
    cpu = dict(wall)
    errs = []
    for r in range(R):  # a, b, c take turns, so a change in machine load hits all three alike
        runs = {}
        runs["a"], d = run_a(base, ft, sae, parts[r], args.batch_size, args.device)
        runs["b"] = run_b(base, ft, part_batches[r], args.device)
        if not args.skip_c:
            runs["c"], delta_c = run_c(base, ft, sae, part_batches[r], args.device)
            errs.append(float((delta_c.cpu() - d.delta).abs().max()))
        for k, t in runs.items():
            wall[k] += t.wall
            cpu[k] += t.cpu
        print("  round %d/%d: " % (r + 1, R) + ", ".join(
            f"{k} {t.wall:.1f}s wall {t.cpu:.1f}s cpu" for k, t in runs.items()), flush=True)
    l0 = float(d.base.freq.sum())
    names = {"a": "(a) diff_latents", "b": "(b) bare full forward, 2 models", "c": "(c) SAE-Lens cache + mean"}
    for k in ("a", "b") + (() if args.skip_c else ("c",)):
        print(f"{names[k]:33s} {wall[k]:7.1f}s wall {n_tok / wall[k]:8.1f} tok/s | {cpu[k]:7.1f}s cpu "
              f"{n_tok / cpu[k]:8.1f} tok/cpu-s")
    print(f"    (a): L0 {l0:.0f} latents/token; per-prompt second pass: {d.meta['per_prompt_second_pass']} latents")
    if not args.skip_c:
        print(f"    max |delta(a) - delta(c)| = {max(errs):.2e} (same numbers, different speed)")
    for k, target in (("b", 1.8), ("c", 2.5)):
        if k in wall and wall[k]:
            print(f"ratio (a)/{'(' + k + ')'} throughput: {wall[k] / wall['a']:.2f}x wall-clock, "
                  f"{cpu[k] / cpu['a']:.2f}x cpu time  (target >= {target}x)")
    top = d.top(8, "increase").index.tolist()
    print(f"top latents by increase (last round): {top} (planted shift on latents 0..7)")
    del base, ft, batches
    gc.collect()
    if not args.skip_memory:
        n = args.memory_prompts
        m1 = measure_memory(n, 2 * args.batch_size, args.device)
        m10 = measure_memory(10 * n, 2 * args.batch_size, args.device)
        for m in (m1, m10):
            print(f"memory (a) {m['n_prompts']:5d} prompts {m['tokens']:7d} tokens: peak {m['peak'] / 2**20:8.1f} MiB "
                  f"(models + SAE + prompts before: {m['start'] / 2**20:.1f} MiB; working set {(m['peak'] - m['start']) / 2**20:.1f} MiB)"
                  f", {m['seconds']:.1f}s" + ("" if m["exact"] else " [peak includes setup: no VmHWM reset]"))
        growth = (m10["peak"] - m1["peak"]) / m1["peak"]
        ws1, ws10 = m1["peak"] - m1["start"], m10["peak"] - m10["start"]
        print(f"peak memory growth for 10x prompts: {100 * growth:+.1f}% of peak (target < 10%); "
              f"working set {ws1 / 2**20:.1f} -> {ws10 / 2**20:.1f} MiB")
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
