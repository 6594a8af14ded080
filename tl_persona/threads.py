"""CPU threads for the work's size: one intra-op thread for small models, unless the user chose.

Why: torch runs every CPU op on all physical cores by default. For a small model (Persona World's
organism is 128 wide) one op lasts microseconds to a millisecond, so a second thread saves little,
and when another process wants a core the threads wait for each other (spinning) at every op:
on 2 cores beside one busy process, ``tl-persona demo --quick`` took 70.6 s with torch's default of
2 threads and 35.0 s with one (27 s alone). Models of GPT-2-small width and more gain from threads
and keep torch's default.

The rule (:func:`threads_for`): one thread below d_model 512, torch's current setting otherwise. It is
applied only where nobody chose: not when ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set, and not
when ``torch.set_num_threads`` changed the count since this module was imported
(:func:`user_chose_threads`). The ``tl-persona demo`` command applies it; in a notebook, call
:func:`threads_for_width` yourself (or set the threads you want).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

__all__ = ["SMALL_WIDTH", "threads_for", "user_chose_threads", "threads_for_width"]

SMALL_WIDTH = 512
"""Models narrower than this (d_model) run on one intra-op thread."""

_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_AT_IMPORT = torch.get_num_threads()


def threads_for(d_model: int) -> int:
    """Intra-op threads for a model of width ``d_model``: 1 below :data:`SMALL_WIDTH`, else the current count."""
    return 1 if int(d_model) < SMALL_WIDTH else torch.get_num_threads()


def user_chose_threads() -> bool:
    """True when the thread count was chosen: by ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, or by a
    ``torch.set_num_threads`` call since tl_persona.threads was imported."""
    return any(os.environ.get(v, "").strip() for v in _ENV) or torch.get_num_threads() != _AT_IMPORT


@contextlib.contextmanager
def threads_for_width(d_model: int) -> Iterator[int]:
    """Run the body on :func:`threads_for` ``(d_model)`` intra-op threads unless the user chose
    (:func:`user_chose_threads`); the previous count is restored afterwards. Yields the count used."""
    prev = torch.get_num_threads()
    n = prev if user_chose_threads() else threads_for(d_model)
    if n != prev:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != prev:
            torch.set_num_threads(prev)
