"""File handling and model loading shared by ``nncd compress`` and ``nncd decompress``.

Outputs are written to a temporary file beside the target and renamed into place, so a failed or
interrupted run never leaves a half-written output (or clobbers an existing file unless asked to).
``-`` means standard input / standard output.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from nncd_ray.errors import ConfigError, InputError

if TYPE_CHECKING:
    import torch

    from nncd_ray.codec.coder import CodecConfig, LMCodec

STDIO = "-"
# container dtype names -> torch dtype attribute names the loader accepts
_DTYPES = ("float32", "bfloat16", "float16")


def read_input(path: str) -> bytes:
    """All bytes of ``path`` (``-`` = standard input)."""
    if path == STDIO:
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"input file {path!r} does not exist") from exc
    except IsADirectoryError as exc:
        raise InputError(f"input {path!r} is a directory, not a file") from exc
    except OSError as exc:
        raise InputError(f"cannot read {path!r}: {exc.strerror or exc}") from exc


def check_output(path: str, *, source: str, force: bool) -> None:
    """Refuse to overwrite an existing output (unless ``force``) or the input itself."""
    if path == STDIO:
        return
    target = Path(path)
    if source != STDIO and target.exists() and target.resolve() == Path(source).resolve():
        raise ConfigError(f"output {path!r} is the input file; choose another output")
    if target.is_dir():
        raise ConfigError(f"output {path!r} is a directory; give a file name")
    if target.exists() and not force:
        raise ConfigError(f"output {path!r} exists; pass --force to overwrite it")
    if not target.parent.exists():
        raise ConfigError(f"output directory {str(target.parent)!r} does not exist")


def write_output(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``-`` = standard output)."""
    if path == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype a container records (``float32``, ``bfloat16``, ``float16``)."""
    import torch

    if name not in _DTYPES:
        raise ConfigError(f"unsupported model dtype {name!r} in the file")
    dtype: torch.dtype = getattr(torch, name)
    return dtype


def load_codec(
    model: str | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    config: CodecConfig,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> LMCodec:
    """Load the model once and bind a codec to it (``model=None``: the embedded model)."""
    from nncd_ray.codec.coder import LMCodec
    from nncd_ray.scorers.lm.loading import load_causal_lm

    loaded = load_causal_lm(
        model, device=device, dtype=dtype, revision=revision, trust_remote_code=trust_remote_code
    )
    return LMCodec(loaded, config)
