"""What a study runs: the compressors (one matrix each), the split, k and where the output goes."""

from __future__ import annotations

import re
from dataclasses import dataclass

from nncd_ray.errors import ConfigError
from nncd_ray.scorers import ScorerSpec, available


@dataclass(frozen=True, kw_only=True)
class CompressorChoice:
    """One column of the study: a table label (also the store's file name) and its scorer."""

    label: str
    spec: ScorerSpec


def parse_compressors(text: str) -> tuple[CompressorChoice, ...]:
    """``"gzip,bz2,lm:/models/gpt2"`` -> choices. ``lm`` alone is the embedded model; ``lm:MODEL``
    names a model directory or hub id (its last path part becomes the label ``lm-<name>``)."""
    choices: list[CompressorChoice] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, argument = item.partition(":")
        if name not in available():
            raise ConfigError(
                f"unknown compressor {name!r} in --compressors; choose from "
                f"{', '.join(available())}"
            )
        if sep and name != "lm":
            raise ConfigError(f"{item!r}: only lm takes an argument (lm:MODEL)")
        if name == "lm" and argument:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "-", argument.rstrip("/").split("/")[-1]).strip("-")
            choices.append(
                CompressorChoice(
                    label=f"lm-{slug or 'model'}",
                    spec=ScorerSpec(name="lm", options={"model": argument}),
                )
            )
        else:
            choices.append(CompressorChoice(label=name, spec=ScorerSpec(name=name, options={})))
    if not choices:
        raise ConfigError("--compressors needs at least one compressor, e.g. gzip,bz2,lzma,zstd")
    labels = [c.label for c in choices]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"compressor {', '.join(repeated)} given more than once")
    return tuple(choices)


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """A study run."""

    # a PROTOCOL.md split name (nncd_ray.data.protocols.PROTOCOLS) and the AG News test.csv it reads
    protocol: str
    data: str
    compressors: tuple[CompressorChoice, ...]
    # output folder (stores, reports, table, plots)
    out: str
    ks: tuple[int, ...] = (1, 3, 5, 7)
    variant: str = "ncd"
    tile: int = 64
    # matrix engine: "local" (in-process) or "ray"; actors and cluster address for ray
    executor: str = "local"
    actors: int = 1
    address: str | None = None
    # tqdm progress of the matrix engine on stderr
    progress: bool = False
    # write PNG plots (needs matplotlib)
    plots: bool = True
    # "none" (the protocol's k-NN over NCD) or "mp" (over its mutual proximity; not PROTOCOL.md)
    hubness_reduction: str = "none"
    # add the baseline row: k-NN over sentence embeddings (nncd_ray.study.embedding_baseline),
    # what a user would pick instead of NCD; skipped, with a note, without the [embed] extra
    embedding_baseline: bool = True
    # candidate pruning of every compressor's matrix (nncd matrix --candidates M --prefilter)
    candidates: int | None = None
    prefilter: str = "zstd"
