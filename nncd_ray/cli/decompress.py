"""``nncd decompress``: restore a file written by ``nncd compress``.

Needs the same model (checked by its weights hash), the same dtype (read from the file unless
``--dtype`` is given) and the same kind of device (default: the one the file was written on, CPU
when that is not available here). The result is checked against the original's CRC-32 before
anything is written. ``-`` reads standard input / writes standard output.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from nncd_ray.cli.compress import add_model_arguments
from nncd_ray.codec.coder import CodecConfig
from nncd_ray.codec.container import read_container
from nncd_ray.codec.files import check_output, load_codec, read_input, torch_dtype, write_output
from nncd_ray.scorers.lm.devices import DEVICES, DTYPES, resolve_device, resolve_dtype

log = logging.getLogger(__name__)


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "decompress",
        help="restore a file compressed with nncd compress",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="IN", help="the .nncd file ('-' = standard input)")
    parser.add_argument("output", metavar="OUT", help="restored file ('-' = standard output)")
    add_model_arguments(parser)
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default=None,
        help="where the model runs (default: the device type the file was written on)",
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None, help="weights dtype (default: the file's)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    check_output(args.output, source=args.input, force=args.force)
    blob = read_input(args.input)
    header, _, _ = read_container(blob)  # not an nncd file / truncated / corrupted: fail early
    device_name = args.device
    if device_name is None:
        device_name = header.device_type if header.device_type in ("cpu", "cuda") else "cpu"
        if device_name == "cuda" and not torch.cuda.is_available():
            log.warning("the file was written on cuda; no GPU here, decoding on cpu")
            device_name = "cpu"
    device = resolve_device(device_name)
    dtype = torch_dtype(header.dtype) if args.dtype is None else resolve_dtype(args.dtype, device)
    codec = load_codec(
        args.model,
        device=device,
        dtype=dtype,
        config=CodecConfig(),
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
    )
    write_output(args.output, codec.decompress(blob))
    return 0
