"""The on-disk cache of an HTTP judge's answers: one SQLite file, safe to share, never half-written.

Each answer is the judge model's top log-probabilities for one exact request (model, filled rubric,
logprob settings), keyed by a hash of that request, so a re-run, a resumed sweep or another process
pays for no answer twice. :class:`~tl_persona.evals.http_judge.OpenAIJudge` owns one when given
``cache=``; it stores log-probabilities rather than scores, so scoring settings can change freely.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from tl_persona.validate import BadInput

__all__ = ["JudgeCache"]


def _is_logprob(v: Any) -> bool:
    """A finite number <= 0 (what the judge accepted when it stored the answer)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        f = float(v)
    except OverflowError:
        return False
    return math.isfinite(f) and f <= 0.0


def _valid_top(top: Any) -> bool:
    """True for a stored answer ``[[token, logprob], ...]`` with real log-probabilities."""
    return isinstance(top, list) and all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and _is_logprob(e[1]) for e in top
    )


class JudgeCache:
    """SQLite store of judge answers (top log-probabilities), keyed by a hash of the exact request.

    :meth:`put` returns once its answer is committed, so a crash loses at most the answers in flight
    and never leaves a half-written cache. Answers that arrive while a commit is under way are
    committed together in the next transaction (group commit: one disk sync for many answers, so
    that filling the cache keeps up with many requests in flight). Several processes may share one
    file (SQLite's locking).
    """

    _INSERT = "INSERT OR REPLACE INTO judge_cache (key, model, metric, top_logprobs, created) VALUES (?, ?, ?, ?, ?)"

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the connection
        self._queue = threading.Condition(threading.Lock())  # the rows waiting for a commit
        self._pending: list[tuple[Any, ...]] = []
        self._queued = 0  # rows handed to put() so far (row k has ticket k)
        self._done = 0  # rows whose commit has finished (or failed)
        self._writing = False
        self._failed: list[tuple[int, int, BaseException]] = []
        try:
            self._db = sqlite3.connect(str(path), timeout=60.0, check_same_thread=False)
            with self._db:
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS judge_cache ("
                    " key TEXT PRIMARY KEY, model TEXT NOT NULL, metric TEXT NOT NULL,"
                    " top_logprobs TEXT NOT NULL, created REAL NOT NULL)"
                )
        except sqlite3.DatabaseError as e:
            raise BadInput(
                f"cache={str(path)!r} is not a usable judge cache ({e}); pass a new file path "
                "(e.g. 'judge_cache.sqlite') or delete that file."
            ) from None

    def get(self, key: str) -> list[list[Any]] | None:
        """The stored answer, or None when there is none or it is not usable (then it is asked again)."""
        with self._lock:
            row = self._db.execute("SELECT top_logprobs FROM judge_cache WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            top = json.loads(row[0])
        except (TypeError, ValueError):
            return None
        return top if _valid_top(top) else None

    def put(self, key: str, model: str, metric: str, top: list[list[Any]]) -> None:
        """Store one answer; returns once it is committed (with the other rows waiting at that time)."""
        row = (key, model, metric, json.dumps(top), time.time())
        with self._queue:
            self._pending.append(row)
            self._queued += 1
            ticket = self._queued
            while self._done < ticket:
                if self._writing:  # another thread is committing; ours goes into the next batch
                    self._queue.wait()
                    continue
                batch, self._pending = self._pending, []
                lo, hi = self._done + 1, self._queued
                self._writing = True
                self._queue.release()
                error: BaseException | None = None
                try:
                    with self._lock, self._db:
                        self._db.executemany(self._INSERT, batch)
                except Exception as e:  # noqa: BLE001 - handed to every writer of the batch below
                    error = e
                finally:
                    self._queue.acquire()
                    self._writing = False
                    self._done = hi
                    if error is not None:
                        self._failed.append((lo, hi, error))
                    self._queue.notify_all()
            for lo, hi, e in self._failed:
                if lo <= ticket <= hi:
                    raise sqlite3.OperationalError(f"could not write to the judge cache {str(self.path)!r}: {e}") from e

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM judge_cache").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
