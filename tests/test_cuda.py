"""The same numbers on a GPU as on the CPU: diffing, steering, generation, attribution.

Skipped where there is no CUDA device (CI); ``benchmarks/gpu_check.sh`` runs this module on a lent
GPU. Tolerances are float32 kernels' (different reduction orders), not looser.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tl_persona import hooks as H
from tl_persona import testing
from tl_persona.diff import diff_latents

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

HOOK = "blocks.1.hook_resid_pre"


def _prompts(n: int = 24) -> list:
    return [[{"role": "user", "content": " ".join(f"w{(7 * i + j) % 90}" for j in range(2 + i % 9))},
             {"role": "assistant", "content": " ".join(f"w{(3 * i + j) % 90}" for j in range(1 + i % 7))}]
            for i in range(n)]


@pytest.fixture(scope="module")
def pair():
    base = testing.tiny_hooked_transformer(seed=0)
    ft = copy.deepcopy(base)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return base, ft, testing.tiny_sae("standard", hook_name=HOOK)


def _cuda(m):
    return copy.deepcopy(m).to("cuda")


def test_diff_on_cuda_equals_cpu(pair):
    base, ft, sae = pair
    cpu = diff_latents(base, ft, sae, _prompts(), scope="all", batch_size=4, per_prompt_top=4)
    gpu = diff_latents(_cuda(base), _cuda(ft), _cuda(sae), _prompts(), scope="all", batch_size=4, per_prompt_top=4)
    torch.testing.assert_close(gpu.delta.cpu(), cpu.delta, rtol=1e-4, atol=1e-5)
    assert gpu.n_tokens == cpu.n_tokens
    assert sorted(gpu.per_prompt.latents.tolist()) == sorted(cpu.per_prompt.latents.tolist())
    # an SAE left on the CPU next to models on the GPU gives the same numbers
    mixed = diff_latents(_cuda(base), _cuda(ft), sae, _prompts(), scope="all", batch_size=4, per_prompt_top=4)
    torch.testing.assert_close(mixed.delta.cpu(), cpu.delta, rtol=1e-4, atol=1e-5)


def test_steer_and_ablate_on_cuda_equal_cpu(pair):
    base, _, sae = pair
    tokens = torch.tensor([[base.tokenizer.bos_token_id] + [5 + i for i in range(9)]])
    u = torch.randn(32, generator=torch.Generator().manual_seed(2))
    gb, gs = _cuda(base), _cuda(sae)
    for cpu_hooks, gpu_hooks in ((H.steer(HOOK, u, 4.0), H.steer(HOOK, u.cuda(), 4.0)),
                                 (H.ablate(sae, [1, 5]), H.ablate(gs, [1, 5]))):
        with torch.no_grad():
            want = base.run_with_hooks(tokens, fwd_hooks=cpu_hooks)
            got = gb.run_with_hooks(tokens.cuda(), fwd_hooks=gpu_hooks)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
    assert H.hooks_attached(gb) == []


def test_greedy_generation_on_cuda_equals_cpu(pair):
    from tl_persona.evals.generate import sample

    base, _, _ = pair
    convs = [[{"role": "user", "content": "w1 w2 w3"}], [{"role": "user", "content": "w4 w5 w6 w7 w8 w9"}]]
    want = sample(base, convs, temperature=0, max_new_tokens=8)
    assert sample(_cuda(base), convs, temperature=0, max_new_tokens=8) == want


def test_attribution_on_cuda_equals_cpu(pair):
    from tl_persona.attribution import attribute, token_mass

    _, ft, sae = pair
    convs = [p[:1] for p in _prompts(8)]
    obj = token_mass([ft.tokenizer.convert_tokens_to_ids("w42")])
    cpu = attribute(ft, sae, convs, obj, batch_size=4)
    gpu = attribute(_cuda(ft), _cuda(sae), convs, obj, batch_size=4)
    torch.testing.assert_close(gpu.scores, cpu.scores, rtol=1e-3, atol=1e-6)


def test_the_diff_loop_never_waits_for_the_gpu(pair):
    """``torch.cuda.set_sync_debug_mode("warn")`` warns at every call that makes the host wait for the
    GPU (``.item()``, ``.cpu()``, ``nonzero``, a blocking copy...); none may come from tl_persona's
    code per batch. Per batch: the difference of two runs with 25 and 50 batches after the pilot, so
    the run's own reads (the pilot's candidates, the end of the run) cancel out. The CPU-side spy of
    the same property is tests/test_host_syncs.py."""
    import collections
    import os
    import warnings

    from tl_persona import engine

    base, ft, sae = pair
    gb, gf, gs = _cuda(base), _cuda(ft), _cuda(sae)
    pkg = os.path.dirname(engine.__file__)
    prompts = [" ".join(f"w{(7 * i + j) % 90}" for j in range(3 + i % 9)) for i in range(264)]
    diff_latents(gb, gf, gs, prompts[:16], scope="all", batch_size=4, per_prompt_top=3)  # warm-up

    def syncs(n: int) -> collections.Counter:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                diff_latents(gb, gf, gs, prompts[:n], scope="all", batch_size=4, per_prompt_top=3)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return collections.Counter(f"{os.path.basename(w.filename)}:{w.lineno}" for w in caught
                                   if str(w.filename).startswith(pkg))

    c1, c2 = syncs(64 + 100), syncs(64 + 200)
    per_batch = {k: (c2[k] - c1[k]) / 25 for k in set(c1) | set(c2) if c2[k] != c1[k]}
    assert per_batch == {}, f"host syncs per batch, by call site: {per_batch} (per run: {dict(c1)})"
