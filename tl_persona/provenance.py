"""Provenance and safe files: identities, digests, versions and atomic writes.

The bottom layer of tl_persona (it imports nothing of the package). Everything a result needs to
be trusted later lives here: a cheap identity of a model and of an SAE (names, shapes, a weight
hash), digests of tensors and JSON values, the versions of the packages involved, and writes that
never leave a half-written file, never replace a file that is not ours, and follow the umask.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from tl_persona._version import __version__
from tl_persona.validate import BadInput

__all__ = [
    "tensor_digest",
    "json_digest",
    "model_identity",
    "sae_identity",
    "package_versions",
    "atomic_write_bytes",
    "atomic_write_text",
    "guard_overwrite",
    "follow_umask",
    "PROVENANCE_KEY",
    "read_safetensors",
]

PROVENANCE_KEY = "tl_persona"
"""The safetensors header key under which a saved result keeps its JSON provenance (format, version,
models, SAE, prompts, versions)."""


# --------------------------------------------------------------------------- digests
def tensor_digest(t: Tensor, slices: int = 8, width: int = 512) -> bytes:
    """Bytes identifying a tensor's values: all of a small tensor, else ``slices`` evenly spaced
    contiguous runs of ``width`` elements (reads a few KiB, whatever the tensor's size)."""
    flat = t.detach().reshape(-1)
    if flat.numel() <= slices * width:
        part = flat
    else:
        starts = torch.linspace(0, flat.numel() - width, slices).long().tolist()
        part = torch.cat([flat[s : s + width] for s in starts])
    return part.float().cpu().numpy().tobytes()


def json_digest(obj: Any, n: int = 16) -> str:
    """The first ``n`` hex digits of the SHA-256 of ``obj``'s canonical JSON (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


# --------------------------------------------------------------------------- identities
def model_identity(model: Any) -> dict[str, Any]:
    """A cheap identity of a TransformerLens model for provenance: name, class, shape facts and a
    weight hash.

    The hash covers every parameter's name, shape and dtype, all values of small tensors (biases,
    norms) and 8 evenly spaced runs of 512 values of large ones: any fine-tune (which moves all
    weights) or edit of a small tensor changes it, while only a few KiB per tensor are read. An
    edit confined to a few entries of a large matrix can escape it: it identifies, it does not
    checksum.
    """
    adapter = type(model).__name__ == "ModelAdapter"  # (the core imports nothing above it)
    m = model.model if adapter else model
    h = hashlib.sha256()
    n = 0
    with torch.no_grad():
        for name, p in m.named_parameters():
            n += p.numel()
            h.update(f"{name}:{tuple(p.shape)}:{str(p.dtype)}".encode())
            h.update(tensor_digest(p))
    cfg = m.cfg
    default = str(getattr(cfg, "model_name", None) or type(m).__name__)
    return {
        "name": model.name if adapter else default,
        "class": type(m).__name__,
        "n_layers": int(cfg.n_layers),
        "d_model": int(cfg.d_model),
        "d_vocab": int(getattr(cfg, "d_vocab", 0) or 0),
        "n_params": int(n),
        "weight_hash": h.hexdigest()[:16],
    }


def sae_identity(sae: Any, hook_name: str | None = None) -> dict[str, Any]:
    """Provenance of an SAE: architecture, sizes, hook, SAE-Lens metadata (release/id when loaded
    from a release) and a hash of its weights (see :func:`model_identity`)."""
    meta: dict[str, Any] = {}
    raw = getattr(getattr(sae, "cfg", None), "metadata", None)
    if raw is not None:
        items = raw.to_dict() if hasattr(raw, "to_dict") else dict(raw)
        for k, v in items.items():
            try:
                json.dumps(v)
                meta[str(k)] = v
            except TypeError:
                meta[str(k)] = repr(v)
    arch = sae.cfg.architecture() if hasattr(sae.cfg, "architecture") else type(sae).__name__
    h = hashlib.sha256()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        t = getattr(sae, name, None)
        if isinstance(t, Tensor):
            h.update(name.encode() + tensor_digest(t))
    hook = hook_name or getattr(raw, "hook_name", None)
    return {
        "class": type(sae).__name__,
        "architecture": str(arch),
        "d_in": int(sae.cfg.d_in),
        "d_sae": int(sae.cfg.d_sae),
        "hook_name": hook,
        "dtype": str(sae.W_dec.dtype).removeprefix("torch."),
        "metadata": meta,
        "weight_hash": h.hexdigest()[:16],
    }


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a result depends on."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("tl-persona", "torch", "transformer-lens", "sae-lens", "safetensors", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            if pkg == "tl-persona":
                out[pkg] = __version__
    return out


# --------------------------------------------------------------------------- files
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give a file (``0666``) or folder (``0777``) made by ``tempfile`` the permissions that
    ``open``/``mkdir`` would have given it under the current umask (tempfile's are ``0600``/``0700``)."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~_umask())


def atomic_write_bytes(path: str | os.PathLike, data: bytes, chunk: int = 1 << 24) -> Path:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, ``os.replace``.

    An interrupted write (error, signal, crash) leaves the old file, or none, never a partial one.
    The file gets the permissions a plain ``open(path, "w")`` would give (``0666`` less the umask),
    not the ``0600`` of a temporary file, so a shared results folder stays readable to the group.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            for i in range(0, len(data), chunk):
                fh.write(data[i : i + chunk])
            fh.flush()
            os.fsync(fh.fileno())
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def guard_overwrite(
    path: str | os.PathLike,
    *,
    what: str,
    is_ours: Callable[[Path], bool],
    overwrite: bool = False,
    option: str = "overwrite=True",
) -> Path:
    """``path`` if a ``what`` may be written there, else a clear :class:`FileExistsError`.

    A missing path is fine; an existing file is replaced only when ``is_ours(path)`` says it is a
    file of the same kind (a saved diff replaces a saved diff) or the caller passed ``overwrite``;
    a folder is never replaced. Call it before the compute whose result goes to ``path``, so a
    mistyped path fails in the first second, not after an hour.
    """
    p = Path(path)
    if p.is_dir():
        raise FileExistsError(f"{str(p)!r} is a folder; pass a file path for the {what}")
    if p.exists() and not overwrite:
        try:
            ours = bool(is_ours(p))
        except Exception:
            ours = False
        if not ours:
            raise FileExistsError(
                f"{str(p)!r} exists and is not a {what}, so it will not be replaced; pass another path, "
                f"or {option} to replace it"
            )
    return p


# --------------------------------------------------------------------------- safetensors files
def read_safetensors(path: str | os.PathLike, *, tensors: bool = True) -> tuple[dict[str, str], dict[str, Tensor]]:
    """Header metadata (and, with ``tensors``, the tensors) of a safetensors file: the one reader of
    saved diffs, attributions and persona vectors, with clear errors for folders and junk."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{str(path)!r} is a folder, not a saved tl_persona file (.safetensors)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            out = {k: fh.get_tensor(k) for k in fh.keys()} if tensors else {}
    except Exception as e:  # safetensors raises its own SafetensorError, which names no path
        raise BadInput(f"{str(path)!r} is not a readable safetensors file (truncated, or of another kind: "
                       f"{' '.join(str(e).split())[:120]})") from None
    return header, out
