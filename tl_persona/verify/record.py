"""The sweep's record: an append-only JSON-lines file of finished settings, so a sweep resumes.

Each line holds the sweep's fingerprint (models, SAE, prompts, sampling, judge) and one
:class:`~tl_persona.verify.cells.SettingResult`. With several ranks, rank 0 reads and writes the file
and broadcasts the finished settings to the others.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from tl_persona.data import read_utf8
from tl_persona.provenance import follow_umask
from tl_persona.verify.cells import SettingResult
from tl_persona.validate import BadInput

__all__ = ["Record"]


class Record:
    """An append-only JSON-lines record of finished settings.

    A torn last line (a write cut short by a crash) is ignored; a corrupt line elsewhere is named
    (file and line) in a warning and its setting is run again. A record written by a sweep with
    other settings or another judge is refused.
    """

    rank: int = 0
    world: int = 1

    @classmethod
    def shared(cls, path: str | os.PathLike | None, fingerprint: str, rank: int, world: int) -> "Record":
        """The record of a sweep over ``world`` ranks: rank 0 reads (and later writes) the file and
        broadcasts the finished settings; the other ranks keep them in memory only."""
        if world <= 1:
            return cls(path, fingerprint)
        import torch.distributed as dist

        msg: list[Any] = [None]
        rec = None
        if rank == 0:
            try:
                rec = cls(path, fingerprint)
                msg[0] = ("ok", [r.to_json() for r in rec.done.values()])
            except Exception as e:  # the other ranks raise too instead of waiting
                msg[0] = ("error", f"{type(e).__name__}: {e}")
                err = e
        dist.broadcast_object_list(msg, src=0)
        if rank == 0 and rec is None:
            raise err
        if msg[0][0] != "ok":
            raise BadInput(f"verify_latents: rank 0 could not read the record: {msg[0][1]}")
        if rec is None:
            rec = cls(None, fingerprint)
            for d in msg[0][1]:
                r = SettingResult.from_json(d)
                rec.done[r.setting.key] = r
        rec.rank, rec.world = rank, world
        return rec

    def __init__(self, path: str | os.PathLike | None, fingerprint: str) -> None:
        self.path = Path(path) if path is not None else None
        self.fingerprint = fingerprint
        self.done: dict[str, SettingResult] = {}
        if self.path is None or not self.path.exists():
            return
        if self.path.is_dir():
            raise BadInput(f"record={str(self.path)!r} is a folder; pass a file path for the sweep's record")
        lines = read_utf8(self.path).split("\n")
        last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                fp = d["fingerprint"]
                r = SettingResult.from_json(d["result"]) if fp == fingerprint else None
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                if i != last:
                    warnings.warn(f"{self.path}: line {i + 1} is corrupt ({type(e).__name__}); its setting will be "
                                  "run again", stacklevel=3)
                continue
            if r is None:
                raise BadInput(
                    f"record {str(self.path)!r} was written by a sweep with other settings (models, SAE, prompts, "
                    "samples, seed or judge); pass a new record path to start a new sweep, or delete the old file"
                )
            self.done[r.setting.key] = r

    answers_path: Path | None = None

    def add(self, r: SettingResult) -> None:
        self.done[r.setting.key] = r
        if self.path is not None:
            _append(self.path, {"fingerprint": self.fingerprint, "result": r.to_json()})
        if self.answers_path is not None and r.answers:
            _append(self.answers_path, {"fingerprint": self.fingerprint, "setting": r.setting.key,
                                        "answers": list(r.answers)})


def _append(path: Path, obj: Any) -> None:
    """One JSON line appended and flushed to disk (a crash leaves at most a torn last line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    if new:
        follow_umask(path)


def read_answers(path: str | os.PathLike, fingerprint: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """The answers log of a sweep (:class:`~tl_persona.verify.Execution` ``answers``): each setting's
    judged answers by setting key, the last entry of a setting winning; with ``fingerprint``, only
    that sweep's. A torn last line is skipped."""
    out: dict[str, list[dict[str, Any]]] = {}
    p = Path(path)
    if not p.exists():
        return out
    for line in read_utf8(p).split("\n"):
        try:
            d = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if d and (fingerprint is None or d.get("fingerprint") == fingerprint):
            out[d["setting"]] = d["answers"]
    return out
