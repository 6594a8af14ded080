"""Benchmark of tl_persona.diff.diff_latents against the two honest baselines, in one run.

Setup (no downloads): a HookedSAETransformer with random weights of one of these shapes (``--shape``),
a "fine-tuned" copy (small noise on every weight plus a shift along a few latents' encoder
directions), and a ReLU SAE at the middle layer whose biases are calibrated on sample activations
for a realistic sparsity (a random SAE would fire on half its latents); prompts are random word
sequences:

* ``gpt2`` (default): GPT-2 small (12 layers, d_model 768, 12 heads, d_mlp 3072, vocabulary
  50,257), 24,576 latents at ``blocks.6.hook_resid_pre`` (L0 about 110), prompts of 16-256 tokens;
* ``qwen2.5-0.5b``: Qwen2.5-0.5B (24 layers, d_model 896, 14 heads / 2 KV heads, rotary, RMSNorm,
  gated MLP d_mlp 4864, vocabulary 151,936, no BOS), 32,768 latents at ``blocks.12.hook_resid_pre``,
  prompts of 16-256 tokens;
* ``tiny``: 2 layers x 64 wide (4 heads, d_mlp 256, vocabulary 1,024), 512 latents at
  ``blocks.1.hook_resid_pre`` (L0 about 8), prompts of 8-64 tokens: the model costs almost
  nothing, so (a)/(b) shows the library's own per-batch overhead (the host's work on a GPU).

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
    python benchmarks/bench_diff.py --shape tiny --skip-c --skip-memory   # the CPU proxy of per-batch overhead

Every run prints tokens/s, the process CPU time over wall time of each way (a host that waits
for a GPU spins: CPU time near wall time means one busy host thread), and on CUDA the tokens/s
that the device's peak FLOPs would allow for (a)'s and (b)'s arithmetic.
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

_GPT2 = dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024,
             act_fn="gelu_new", normalization_type="LN", default_prepend_bos=True)
SHAPES = {
    "gpt2": dict(cfg=_GPT2, hook="blocks.6.hook_resid_pre", d_sae=24576, l0=64, lengths=(16, 256)),
    "qwen2.5-0.5b": dict(
        cfg=dict(n_layers=24, d_model=896, n_heads=14, d_head=64, n_key_value_heads=2, d_mlp=4864, d_vocab=151936,
                 n_ctx=1024, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                 gated_mlp=True, final_rms=True, rotary_base=1000000, eps=1e-6, default_prepend_bos=False,
                 original_architecture="Qwen2ForCausalLM"),
        hook="blocks.12.hook_resid_pre", d_sae=32768, l0=64, lengths=(16, 256)),
    "tiny": dict(cfg=dict(_GPT2, n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=1024, n_ctx=128),
                 hook="blocks.1.hook_resid_pre", d_sae=512, l0=8, lengths=(8, 64)),
}
# set by main() from --shape; the GPT-2-small values are the default
SHAPE = SHAPES["gpt2"]
HOOK, D_SAE, VOCAB, TARGET_L0 = SHAPE["hook"], SHAPE["d_sae"], SHAPE["cfg"]["d_vocab"], SHAPE["l0"]


def use_shape(name: str, dry: bool = False) -> None:
    """Make ``name`` the current shape; ``dry`` shrinks its widths (d_model 64, d_mlp 256, 2 heads
    of 32 and 1 KV head where it has fewer KV heads, vocabulary 1,024, 512 latents, prompts of 8-64
    tokens) and keeps its depth and architecture: a quick run of the same code paths."""
    global SHAPE, HOOK, D_SAE, VOCAB, TARGET_L0
    SHAPE = SHAPES[name]
    if dry:
        cfg = dict(SHAPE["cfg"], d_model=64, n_heads=2, d_head=32, d_mlp=256, d_vocab=1024, n_ctx=128)
        if "n_key_value_heads" in cfg:
            cfg["n_key_value_heads"] = 1
        SHAPE = dict(SHAPE, cfg=cfg, d_sae=512, l0=8, lengths=(8, 64))
    HOOK, D_SAE, VOCAB, TARGET_L0 = SHAPE["hook"], SHAPE["d_sae"], SHAPE["cfg"]["d_vocab"], SHAPE["l0"]


def n_words() -> int:
    """Words of the benchmark's tokenizer: the vocabulary less 6 specials, at most 50,251 (a
    larger model vocabulary, as Qwen's, only widens the embedding and unembedding)."""
    return min(VOCAB, 50257) - 6


# ----------------------------------------------------------------------------- setup
def build(device: str, seed: int = 0):
    """Base and fine-tuned HookedSAETransformers of the current shape, their tokenizer, and the SAE."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    from tl_persona.testing import word_tokenizer

    tok = word_tokenizer([f"w{i}" for i in range(n_words())])
    cfg = HookedTransformerConfig(**SHAPE["cfg"], seed=seed, device=device)
    base = HookedSAETransformer(cfg, tokenizer=tok).eval()
    g = torch.Generator().manual_seed(seed + 1)
    sae, W, norm = make_sae(base, tok, HOOK, device, g)
    # Not copy.deepcopy(base): HookedSAETransformer's blocks hold closures over the original
    # model's MLPs, so a deep copy would silently run the base model's MLP weights.
    ft = HookedSAETransformer(cfg, tokenizer=tok).eval()
    ft.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.02 * p.std() * torch.randn(p.shape, generator=g).to(device))
        # the planted shift: 8 down to 4 along latents 0..7 at GPT-2 small's residual norm (about 61 at
        # block 6), scaled to other shapes' norms so that the fine-tune's L0 grows alike (124 -> 198)
        scale = 1.0 if SHAPE is SHAPES["gpt2"] else norm / 61.3  # (a dry run's gpt2 shape is another dict)
        shift = (W[:8] * torch.linspace(8.0, 4.0, 8)[:, None]).sum(0).to(device) * scale
        ft.blocks[int(HOOK.split(".")[1]) - 1].mlp.b_out.add_(shift)
    return base, ft, tok, sae


def make_sae(base, tok, hook: str, device: str, g: torch.Generator, d_sae: int | None = None):
    """A ReLU SAE at ``hook`` whose encoder biases are calibrated on sample activations so that about
    TARGET_L0 latents fire per token (a random SAE would fire on half of its latents); also its
    decoder rows and the mean residual norm of the sample."""
    from tl_persona.models import as_adapter
    from tl_persona.saes import sae_from_weights

    d, d_sae = base.cfg.d_model, d_sae or D_SAE
    W = torch.randn(d_sae, d, generator=g)
    W = W / W.norm(dim=-1, keepdim=True)
    sample = torch.randint(6, 6 + n_words(), (16, min(160, base.cfg.n_ctx)), generator=g)
    sample[:, 0] = tok.bos_token_id
    with torch.no_grad():
        x = as_adapter(base).run_to_hook(sample.to(device), hook)[:, 1:].reshape(-1, d).float()
        norm = float(x.norm(dim=-1).mean())
        pre = x @ W.T.to(x.device)  # [tokens, d_sae], on the model's device
        k = max(1, round(pre.shape[0] * TARGET_L0 / d_sae))
        b_enc = -pre.topk(k + 1, dim=0).values[-1].cpu()  # per latent: fires on ~k of these tokens
        del pre, x
    sae = sae_from_weights(W.T.contiguous(), b_enc, W.clone(), torch.zeros(d), "relu", hook_name=hook).to(device)
    return sae, W, norm


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
    print(f"(one call)/(single deepest) = {med['one call, k SAEs'] / med['single call, deepest SAE']:.2f} (target <= 1.7); "
          f"(k separate)/(one call) = {med['k separate calls'] / med['one call, k SAEs']:.2f}x; "
          f"max |delta(one call) - delta(separate)| = {err:.1e}")
    depth = int(hooks[deepest].split(".")[1])
    fwd = flops_per_token(SHAPE["cfg"], depth)  # per token and model up to the deepest hook (weights only)
    enc = flops_per_token(SHAPE["cfg"], 0, args.d_sae)
    print(f"FLOPs per token and model: forward to layer {depth} {fwd / 1e6:.0f}M, one SAE encode {enc / 1e6:.0f}M; "
          f"expected ratio from FLOPs alone {(fwd + k * enc) / (fwd + enc):.2f}")


def make_prompts(n_tokens: int, seed: int = 0) -> list[str]:
    """Random word prompts of the shape's lengths (16..256 tokens, BOS included) adding up to about ``n_tokens``."""
    lo, hi = SHAPE["lengths"]
    rng = np.random.default_rng(seed)
    out, total = [], 0
    while total < n_tokens:
        n = int(rng.integers(lo, hi + 1))
        out.append(" ".join(f"w{i}" for i in rng.integers(0, n_words(), size=n - 1)))
        total += n
    return out


# ----------------------------------------------------------------------------- arithmetic
def flops_per_token(cfg: dict, layers: int | None, d_sae: int = 0, ctx: float = 0.0) -> float:
    """FLOPs (2 per multiply-add) per token of one model: ``layers`` blocks (None: all of them and
    the unembedding), attention over ``ctx`` earlier positions on average, and an SAE encode of
    ``d_sae`` latents."""
    d, H, dh = cfg["d_model"], cfg["n_heads"], cfg["d_head"]
    kv = cfg.get("n_key_value_heads") or H
    weights = d * dh * (2 * H + 2 * kv) + d * cfg["d_mlp"] * (3 if cfg.get("gated_mlp") else 2)
    n = cfg["n_layers"] if layers is None else layers
    total = n * (2 * weights + 4 * H * dh * ctx) + 2 * d * d_sae
    return total + (2 * d * cfg["d_vocab"] if layers is None else 0)


# Vendor peak TFLOPS (dense): FP32 on CUDA cores, TF32 and BF16 on tensor cores; the first match
# of the device's name wins (H200 computes like an H100 SXM).
PEAKS = (("H100 PCIe", 51, 378, 756), ("H100 NVL", 60, 418, 835), ("H100", 67, 495, 989),
         ("H200", 67, 495, 989), ("A100", 19.5, 156, 312))


def device_peaks(device: str, override: float | None) -> tuple[str, dict[str, float]]:
    """The device's name and peak FLOP/s per precision (empty when unknown, e.g. on a CPU)."""
    if override:
        return "given", {"fp32": override * 1e12}
    if not device.startswith("cuda"):
        return "cpu", {}
    name = torch.cuda.get_device_name()
    for key, fp32, tf32, bf16 in PEAKS:
        if key in name:
            return name, {"fp32": fp32 * 1e12, "tf32": tf32 * 1e12, "bf16": bf16 * 1e12}
    return name, {}


def report_limits(device: str, override: float | None, batches, wall: dict[str, float], n_tok: int) -> None:
    """Tokens/s of (a) and (b) beside what the device's peak FLOPs allow for their arithmetic."""
    name, peaks = device_peaks(device, override)
    if not peaks:
        return
    lay = int(HOOK.split(".")[1])
    counted = [(pb.batch.attention_mask & ~pb.batch.bos_mask).cpu() for pb in batches]
    # average attended length: a token at position t attends to t + 1 positions
    ctx = sum(float(((torch.arange(m.shape[1]) + 1) * m).sum()) for m in counted) / max(n_tok, 1)
    pad = sum(pb.tokens.numel() for pb in batches) / max(n_tok, 1)  # (b) computes the padding too
    per = {"a": 2 * (flops_per_token(SHAPE["cfg"], lay, 0, ctx) * pad + flops_per_token(SHAPE["cfg"], 0, D_SAE)),
           "b": 2 * flops_per_token(SHAPE["cfg"], None, 0, ctx) * pad}
    print(f"device {name}; FLOPs per counted token, both models: (a) {per['a'] / 1e9:.2f} G (forward to block "
          f"{lay} incl. padding + SAE encode), (b) {per['b'] / 1e9:.2f} G (full forward incl. padding)")
    for k in ("a", "b"):
        tps = n_tok / wall[k]
        lim = ", ".join(f"{p} {peak / per[k]:,.0f} tok/s ({100 * tps * per[k] / peak:.1f}%)" for p, peak in peaks.items())
        print(f"    ({k}) {tps:,.0f} tok/s; the peak-FLOPs limit at {lim}")


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
    prompts = [" ".join(f"w{i}" for i in rng.integers(0, n_words(), size=int(rng.integers(8, 32))))
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


def measure_memory(n_prompts: int, batch_size: int, device: str, shape: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(n_prompts), "--batch-size", str(batch_size), "--device", device,
         *shape],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="gpt2", help="model, SAE and prompt sizes (see above)")
    ap.add_argument("--tokens", type=int, default=None,
                    help="total prompt tokens for the speed runs (default 6000; 40000 for --shape tiny)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6, help="interleave a, b, c over this many parts of the prompts")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: tl_persona.threads' choice for the shape's width, at most 2)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on CUDA (all three ways alike)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, when its name is not known")
    ap.add_argument("--memory-prompts", type=int, default=30, help="N for the memory runs (N and 10 N)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-c", action="store_true", help="skip the SAE-Lens baseline")
    ap.add_argument("--dry", action="store_true", help="the shape's depth and architecture at tiny widths (a dry run)")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--layers", default=None, help="multi-layer case: comma-separated layers, one SAE each (e.g. 2,5,8,11)")
    ap.add_argument("--d-sae", type=int, default=None, help="latents per SAE in the multi-layer case (default: the shape's)")
    args = ap.parse_args()
    use_shape(args.shape, args.dry)
    args.tokens = args.tokens or (40000 if args.shape == "tiny" else 6000)
    args.d_sae = args.d_sae or D_SAE
    if args.device == "cpu":
        from tl_persona.threads import threads_for

        torch.set_num_threads(args.threads or min(2, os.cpu_count() or 1, threads_for(SHAPE["cfg"]["d_model"])))
    elif args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return args


def report(args, wall: dict, cpu: dict, n_tok: int, d, errs: list[float], batches) -> None:
    l0 = float(d.base.freq.sum())
    names = {"a": "(a) diff_latents", "b": "(b) bare full forward, 2 models", "c": "(c) SAE-Lens cache + mean"}
    for k in wall:
        print(f"{names[k]:33s} {wall[k]:7.1f}s wall {n_tok / wall[k]:9.1f} tok/s | {cpu[k]:7.1f}s cpu "
              f"{n_tok / cpu[k]:9.1f} tok/cpu-s | cpu/wall {cpu[k] / wall[k]:.2f}")
    print(f"    (a): L0 {l0:.0f} latents/token; per-prompt second pass: {d.meta['per_prompt_second_pass']} latents")
    if errs:
        print(f"    max |delta(a) - delta(c)| = {max(errs):.2e} (same numbers, different speed)")
    if args.shape == "tiny" and not args.dry:  # the model costs almost nothing: the library's per-batch overhead
        print(f"time (a)/(b) = {wall['a'] / wall['b']:.2f} wall-clock, {cpu['a'] / cpu['b']:.2f} cpu time  (target <= 1.2)")
    for k, target in (("b", 1.8), ("c", 2.5)):
        if k in wall and (args.shape != "tiny" or args.dry):
            print(f"ratio (a)/{'(' + k + ')'} throughput: {wall[k] / wall['a']:.2f}x wall-clock, "
                  f"{cpu[k] / cpu['a']:.2f}x cpu time  (target >= {target}x)")
    if args.device.startswith("cuda"):
        print(f"process cpu time / wall time of (a): {cpu['a'] / wall['a']:.2f} (target <= 1.3)")
    report_limits(args.device, args.peak_tflops, batches, wall, n_tok)
    top = d.top(8, "increase").index.tolist()
    print(f"top latents by increase (last round): {top} (planted shift on latents 0..7)")


def memory(args) -> None:
    n = args.memory_prompts
    shape = ["--shape", args.shape] + (["--dry"] if args.dry else [])
    m1 = measure_memory(n, 2 * args.batch_size, args.device, shape)
    m10 = measure_memory(10 * n, 2 * args.batch_size, args.device, shape)
    for m in (m1, m10):
        print(f"memory (a) {m['n_prompts']:5d} prompts {m['tokens']:7d} tokens: peak {m['peak'] / 2**20:8.1f} MiB "
              f"(models + SAE + prompts before: {m['start'] / 2**20:.1f} MiB; working set {(m['peak'] - m['start']) / 2**20:.1f} MiB)"
              f", {m['seconds']:.1f}s" + ("" if m["exact"] else " [peak includes setup: no VmHWM reset]"))
    growth = (m10["peak"] - m1["peak"]) / m1["peak"]
    ws1, ws10 = m1["peak"] - m1["start"], m10["peak"] - m10["start"]
    print(f"peak memory growth for 10x prompts: {100 * growth:+.1f}% of peak (target < 10%); "
          f"working set {ws1 / 2**20:.1f} -> {ws10 / 2**20:.1f} MiB")


def main() -> None:
    args = parse_args()
    if args.layers:
        multi_layer(args)
        return
    if args.memory_child is not None:
        memory_child(args.memory_child, args.batch_size, args.device)
        return
    t0 = time.perf_counter()
    print(f"shape {args.shape}{' (dry: tiny widths)' if args.dry else ''}, device {args.device}, "
          f"torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")
    base, ft, tok, sae = build(args.device)
    prompts = make_prompts(args.tokens)
    R = max(1, min(args.rounds, len(prompts)))
    parts = [prompts[r::R] for r in range(R)]
    part_batches = [batches_for(base, p, args.batch_size) for p in parts]
    batches = [pb for pbs in part_batches for pb in pbs]
    n_tok = sum(int((pb.batch.attention_mask & ~pb.batch.bos_mask).sum()) for pb in batches)
    n_pad = sum(pb.tokens.numel() for pb in batches)
    lo, hi = SHAPE["lengths"]
    print(f"setup {time.perf_counter() - t0:.1f}s; {len(prompts)} prompts of {lo}-{hi} tokens, {n_tok} counted tokens "
          f"({n_pad} padded positions per model), {len(batches)} batches of {args.batch_size}, {R} interleaved rounds")
    # warm-up (allocator, kernels) on a few prompts
    run_a(base, ft, sae, prompts[:2 * args.batch_size], args.batch_size, args.device)
    run_b(base, ft, part_batches[0][-2:], args.device)
    wall: dict[str, float] = {k: 0.0 for k in ("a", "b") + (() if args.skip_c else ("c",))}
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
            f"{k} {t.wall:.2f}s wall {t.cpu:.2f}s cpu" for k, t in runs.items()), flush=True)
    report(args, wall, cpu, n_tok, d, errs, batches)
    del base, ft, batches
    gc.collect()
    if not args.skip_memory:
        memory(args)
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
