"""Checks of user input, one per kind of value, used at every public entry point.

Why one module: each kind of value (a latent index, a finite number, a positive count, a
probability, a judge, a list of prompts) is checked in one place, so every entry point refuses the
same bad values with the same kind of message: it names the parameter, the value and the fix.
Booleans and floats are not latent indices; NaN and infinity are not numbers we take.

Errors are :class:`BadInput`, which is both a ``ValueError`` and a ``TypeError``, so callers may
catch either; the CLI turns it into exit status 2 and one line.

This module belongs to the core layer: it imports nothing of tl_persona.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = [
    "BadInput",
    "latent_index",
    "latent_indices",
    "finite",
    "positive_int",
    "nonneg_int",
    "probability",
    "finite_tensor",
    "one_of",
    "not_none",
    "show",
]


class BadInput(ValueError, TypeError):
    """A value that a tl_persona function does not take; the message names the parameter, the
    value and the fix."""


def show(value: Any, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters: how an error message quotes a bad value."""
    r = repr(value)
    return r if len(r) <= width else r[: width - 3] + "..."


def _is_int(value: Any) -> bool:
    """True for Python / numpy integers and integer 0-d tensors; False for bools and floats."""
    if isinstance(value, bool) or (hasattr(value, "dtype") and str(getattr(value, "dtype", "")) == "bool"):
        return False
    if isinstance(value, numbers.Integral):
        return True
    if isinstance(value, Tensor):
        return value.ndim == 0 and not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool
    return type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and "int" in str(value.dtype)


def latent_index(value: Any, name: str = "latent", d_sae: int | None = None) -> int:
    """``value`` as an ``int`` latent index in ``[0, d_sae)``; bools, floats and strings are refused."""
    if not _is_int(value):
        raise BadInput(
            f"{name}={show(value)} is not a latent index: pass an int (a {type(value).__name__} is not "
            "taken, so 3.7 or True never silently become latent 3 or 1)"
        )
    i = int(value)
    if d_sae is not None and not 0 <= i < d_sae:
        raise BadInput(f"{name}: latent index {i} is out of range for an SAE with d_sae={d_sae} (use 0..{d_sae - 1})")
    return i


def latent_indices(values: Any, name: str = "latents", d_sae: int | None = None) -> Tensor:
    """One latent index or a sequence (or integer tensor) of them, as a 1-D long tensor, each checked
    as by :func:`latent_index`; an empty selection is refused."""
    if isinstance(values, Tensor):
        if values.is_floating_point() or values.dtype == torch.bool or values.is_complex():
            raise BadInput(f"{name} is a {values.dtype} tensor; pass integer latent indices (a long tensor)")
        items: list[Any] = values.flatten().tolist()
    elif _is_int(values) or isinstance(values, (bool, float, str, bytes)) or not isinstance(values, Sequence) and not hasattr(values, "__iter__"):
        items = [values]
    else:
        items = list(values)
    if not items:
        raise BadInput(f"{name}: no latent index given (empty); pass at least one latent index")
    out = [latent_index(v, f"{name}[{k}]" if len(items) > 1 else name, d_sae) for k, v in enumerate(items)]
    return torch.tensor(out, dtype=torch.long)


def finite(
    value: Any,
    name: str,
    *,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    fix: str = "",
) -> float:
    """``value`` as a finite float (NaN and +-inf refused), optionally within ``[min, max]``
    (``min_open`` excludes ``min`` itself). Bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) and not (
        isinstance(value, Tensor) and value.ndim == 0 and value.is_floating_point()
    ):
        raise BadInput(f"{name}={show(value)} is not a number; pass a finite float{_fix(fix)}")
    v = float(value)
    if not math.isfinite(v):
        raise BadInput(f"{name}={v} is not finite; pass a finite number{_fix(fix)}")
    if min is not None and (v < min or (min_open and v == min)):
        raise BadInput(f"{name}={v:g} must be {'>' if min_open else '>='} {min:g}{_fix(fix)}")
    if max is not None and v > max:
        raise BadInput(f"{name}={v:g} must be <= {max:g}{_fix(fix)}")
    return v


def positive_int(value: Any, name: str, *, fix: str = "") -> int:
    """``value`` as an int >= 1 (bools and floats refused)."""
    if not _is_int(value) or int(value) < 1:
        raise BadInput(f"{name}={show(value)} must be a positive integer (1, 2, ...){_fix(fix)}")
    return int(value)


def nonneg_int(value: Any, name: str, *, fix: str = "") -> int:
    """``value`` as an int >= 0 (bools and floats refused)."""
    if not _is_int(value) or int(value) < 0:
        raise BadInput(f"{name}={show(value)} must be a non-negative integer (0, 1, ...){_fix(fix)}")
    return int(value)


def probability(value: Any, name: str, *, fix: str = "") -> float:
    """``value`` as a finite float in ``[0, 1]``."""
    return finite(value, name, min=0.0, max=1.0, fix=fix)


def finite_tensor(t: Any, name: str, *, fix: str = "") -> Tensor:
    """``t`` as a tensor with no NaN or infinity (the first bad entry is named)."""
    x = t if isinstance(t, Tensor) else torch.as_tensor(t)
    if x.is_floating_point() or x.is_complex():
        bad = ~torch.isfinite(x.detach())
        if bool(bad.any()):
            where = tuple(int(i) for i in bad.nonzero()[0].tolist())
            raise BadInput(
                f"{name} has a non-finite entry ({x.detach()[where].item()} at index {where}); pass finite "
                f"values{_fix(fix)}"
            )
    return x


def one_of(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices`` (strings), else an error listing them and the closest."""
    if isinstance(value, str) and value in choices:
        return value
    import difflib

    close = difflib.get_close_matches(str(value), list(choices), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise BadInput(f"{name}={show(value)} is not one of {', '.join(map(repr, choices))}{hint}")


def not_none(value: Any, name: str, what: str) -> Any:
    """``value`` unless it is None, else an error saying what to pass."""
    if value is None:
        raise BadInput(f"{name} is None; pass {what}")
    return value


def _fix(fix: str) -> str:
    return f"; {fix}" if fix else ""
