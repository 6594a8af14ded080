"""A stage of a sweep over ``torch.distributed`` ranks, or in one process.

With several ranks each runs every ``world``-th setting not yet done (round-robin), the results are
gathered on every rank and added to the record in the order one process would add them, so every
rank returns the same table as a single process. A rank that fails tells the others, so none waits
forever in the gather.
"""

from __future__ import annotations

from typing import Any, Sequence

from tl_persona.verify.cells import Setting, SettingResult
from tl_persona.verify.record import Record
from tl_persona.verify.runner import Stage, run_order, run_settings

__all__ = ["run_stage"]


def run_stage(rec: Record, settings: Sequence[Setting], st: Stage) -> None:
    """Run the settings not yet in the record and add their results to it (on every rank)."""
    todo = [s for s in settings if s.key not in rec.done]
    if rec.world > 1:
        _run_shared(rec, todo, st)
        return
    run_settings(todo, st, rec.add)


def _run_shared(rec: Record, todo: list[Setting], st: Stage) -> None:
    import torch.distributed as dist

    got: list[SettingResult] = []
    try:
        run_settings(todo[rec.rank::rec.world], st, got.append)
        mine: tuple[str, Any] = ("ok", [r.to_json() for r in got])
    except Exception as e:  # tell the other ranks, so that none waits forever in the gather
        mine = ("error", f"{type(e).__name__}: {e}")
        err = e
    every: list[Any] = [None] * rec.world
    dist.all_gather_object(every, mine)
    failed = [(r, m[1]) for r, m in enumerate(every) if m[0] != "ok"]
    if failed:
        if mine[0] != "ok":
            raise err
        raise RuntimeError("verify_latents: " + "; ".join(f"rank {r} failed: {msg}" for r, msg in failed))
    done = {r.setting.key: r for m in every for r in map(SettingResult.from_json, m[1])}
    for s in run_order(todo, st.models):  # the order one process adds them in
        rec.add(done[s.key])
