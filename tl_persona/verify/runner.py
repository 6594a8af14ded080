"""Running a stage of a sweep: answers sampled under each setting's hooks, judged, summarised.

Settings of kinds that run one setting per batch row share ``generate`` calls, per model; the others
run one call each. Every answer draws from its own random stream, seeded from the stage's seed, the
setting's key and the answer's prompt and sample index (:func:`row_seeds`), so a setting's result
does not depend on which other settings share its batches.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from tl_persona import hooks as H
from tl_persona import interventions as I
from tl_persona.engine import on_device
from tl_persona.evals.generate import sample, to_judge_items
from tl_persona.evals.judges import Judge, Judgement, check_judge, judge_all
from tl_persona.evals.metrics import Rate, summarize
from tl_persona.models import Message, as_adapter
from tl_persona.verify.cells import Setting, SettingResult
from tl_persona.verify.config import Sampling

__all__ = ["Stage", "evaluate", "run_settings", "run_order", "row_seeds"]

Conversation = Sequence[Message]


@dataclass(frozen=True)
class Stage:
    """Everything the settings of a stage share: the prompts, the judge, the sampling settings, the
    device, the models by name, the intervention target of each setting, and the stage's seed."""

    prompts: tuple[Any, ...]
    judge: Judge
    sampling: Sampling
    device: Any
    models: Mapping[str, Any]
    target: Callable[[Setting], I.Target]
    seed: int
    say: Callable[[str], None]


def evaluate(
    model: Any,
    prompts: Sequence[Conversation],
    judge: Judge,
    *,
    fwd_hooks: H.FwdHooks | Callable[[Tensor], H.FwdHooks] = (),
    n_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 32,
    seed: int = 0,
    batch_size: int = 64,
    n_boot: int = 1000,
    seeds: Sequence[int] | None = None,
) -> tuple[dict[str, Rate], list[Judgement]]:
    """Sample answers under ``fwd_hooks`` and judge them: misaligned, incoherent and label rates.

    Returns the rates (keys ``misaligned``, ``misaligned_coherent``, ``incoherent``, ``label:<x>``,
    from :func:`tl_persona.evals.metrics.summarize`) and the judgements (prompt-major,
    ``n_samples`` per prompt). The judge's answers are checked (one :class:`Judgement` per answer).
    ``seeds`` (one per answer) gives each answer its own random stream (see :func:`sample`).
    """
    check_judge(judge)
    answers = sample(
        model, list(prompts), n_per_prompt=n_samples, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, seed=seed, fwd_hooks=fwd_hooks, batch_size=batch_size, seeds=seeds,
    )
    items = to_judge_items(list(prompts), answers, n_samples)
    judgements = [replace(j, meta={**j.meta, "question": it.question, "answer": it.answer})
                  for j, it in zip(judge_all(judge, items), items)]  # the answer each verdict is about
    return summarize(judgements, n_boot=n_boot, seed=seed), judgements


def run_order(todo: Sequence[Setting], models: Mapping[str, Any]) -> list[Setting]:
    """The order :func:`run_settings` runs ``todo`` in: per model, the batched kinds, then the others."""
    out = []
    for model_name in models:
        mine = [s for s in todo if s.model == model_name]
        out += [s for s in mine if I.get(s.kind).batched is not None]
        out += [s for s in mine if I.get(s.kind).batched is None]
    return out


def run_settings(todo: Sequence[Setting], st: Stage, add: Callable[[SettingResult], None]) -> None:
    """Run ``todo`` (per model, on the stage's device) and hand each result to ``add``, in
    :func:`run_order`."""
    for model_name, model in st.models.items():
        mine = [s for s in todo if s.model == model_name]
        if not mine:
            continue
        with on_device(as_adapter(model), st.device):
            rows = [s for s in mine if I.get(s.kind).batched is not None]
            if rows:
                st.say(f"{model_name}: {len(rows)} steering settings x {len(st.prompts)} prompts x "
                       f"{st.sampling.n_samples} samples")
                _run_batched(add, rows, model, st)
            for s in (s for s in mine if I.get(s.kind).batched is None):
                st.say(f"{model_name}: {s.kind} {s.candidate}")
                rates, js = evaluate(model, st.prompts, st.judge, fwd_hooks=I.get(s.kind).build(st.target(s), s.alpha),
                                     seed=st.seed, seeds=row_seeds(s, len(st.prompts), st.sampling.n_samples, st.seed),
                                     **st.sampling.generation())
                add(_result(s, rates, js))


def _run_batched(add: Callable[[SettingResult], None], settings: list[Setting], model: Any, st: Stage) -> None:
    """One row per (setting, prompt, sample), each row with its own direction and strength. Rows of
    every batchable kind share the calls: a kind's ``batched`` builder acts on its own rows only
    (others get a zero direction, which every batched builder leaves alone), so mixing kinds and
    unmodified rows is exact."""
    tg = [st.target(s) for s in settings]
    dirs = torch.stack([t.direction for t in tg])  # the unmodified models' target is the zero vector
    strengths = torch.tensor([s.alpha for s in settings])
    n = st.sampling.n_samples
    per_setting = len(st.prompts) * n
    convs = [p for _ in settings for p in st.prompts]
    setting_of_row = torch.arange(len(settings)).repeat_interleave(per_setting)
    group_of = [(s.kind, t.hook_name) for s, t in zip(settings, tg)]
    groups = sorted(set(group_of))

    def hooks_for(rows: Tensor) -> H.FwdHooks:
        idx = setting_of_row[rows]
        out: H.FwdHooks = []
        for kind, hook in groups:  # one hook per (kind, hook point): rows of other groups get a zero direction
            on = torch.tensor([group_of[int(i)] == (kind, hook) for i in idx])
            if bool(on.any()):
                out += I.get(kind).batched(hook, dirs[idx] * on[:, None], strengths[idx] * on, st.sampling.positions)  # type: ignore[misc]
        return out

    seeds = [x for s in settings for x in row_seeds(s, len(st.prompts), n, st.seed)]
    _, js = evaluate(model, convs, st.judge, fwd_hooks=hooks_for, seed=st.seed, seeds=seeds,
                     **st.sampling.generation())
    for i, s in enumerate(settings):
        part = js[i * per_setting:(i + 1) * per_setting]
        add(_result(s, summarize(part, n_boot=st.sampling.n_boot, seed=st.seed), part))


def row_seeds(s: Setting, n_prompts: int, n_samples: int, seed: int) -> list[int]:
    """One sampling seed per answer of setting ``s`` (prompt-major): a hash of the stage seed, the
    setting's key and the answer's prompt and sample index, so the answer does not depend on the
    other rows of its batch."""
    base = int.from_bytes(hashlib.sha256(f"{seed}|{s.key}".encode()).digest()[:8], "little")
    return [(base + 1_000_003 * p + j) % (2**63 - 1) for p in range(n_prompts) for j in range(n_samples)]


def _result(s: Setting, rates: dict[str, Rate], js: Sequence[Judgement]) -> SettingResult:
    labels = {k.removeprefix("label:"): v for k, v in rates.items() if k.startswith("label:")}
    answers = tuple({"question": j.meta.get("question"), "answer": j.meta.get("answer"), "aligned": j.aligned,
                     "coherent": j.coherent, "label": j.label} for j in js)
    return SettingResult(s, rates["misaligned"], rates["misaligned_coherent"], rates["incoherent"], labels, len(js),
                         answers)
