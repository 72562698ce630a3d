"""The AG News test set: where it is found, how it is read, and fetching it from the hub.

:func:`agnews_path` finds the CSV for ``--protocol`` (``--data``, ``$NNCD_AGNEWS``,
``../shared/data/agnews/test.csv``, else the user cache, fetched from the Hugging Face hub the
first time) and :func:`load_agnews` reads it as one corpus.

The benchmark splits (:mod:`nncd_ray.data.protocols`) read the AG News test set as the original CSV:
no header, columns ``label,title,description`` with 1-based labels (1 World, 2 Sports,
3 Business, 4 Sci/Tech), and document text ``title + " " + description``. The hub's
``fancyzhx/ag_news`` (formerly ``ag_news``) holds the same 7,600 test documents in file order,
with 0-based labels and the text already joined as ``title + " " + description``. Where the title
ends is not recorded there, so the conversion splits the text at its first space: column 2 holds
the first word, column 3 the rest, and the protocols' join gives back the hub's text exactly. The
documents, labels and ids (row numbers) are then those of the original file, so the protocol
splits are the same; :data:`AGNEWS_TEST_CONTENT_HASH` (the project's copy) tells whether they are.

The converted file is cached at ``$NNCD_CACHE_DIR/agnews/test.csv`` (default
``$XDG_CACHE_HOME/nncd_ray``, else ``~/.cache/nncd_ray``) and fetched once. Offline
(``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set), without the
``datasets`` package, or when the hub cannot be reached (checked with one connection first),
:func:`fetch_agnews` raises
:class:`~nncd_ray.errors.DatasetNotFound` with one line naming both ways out.
"""

from __future__ import annotations

import csv
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nncd_ray.data.corpus import Corpus
from nncd_ray.data.loading import load_corpus
from nncd_ray.errors import DatasetNotFound, InputError

log = logging.getLogger(__name__)

# environment variable naming the AG News test.csv (or its folder) for --protocol without --data
DATA_ENV = "NNCD_AGNEWS"
# environment variable naming the cache directory (default: $XDG_CACHE_HOME/nncd_ray)
CACHE_ENV = "NNCD_CACHE_DIR"
# hub dataset ids to try, in order (the second is the old name, redirected by the hub)
HUB_DATASETS: tuple[str, ...] = ("fancyzhx/ag_news", "ag_news")
# the class names of the hub's 0-based labels, in order; label k is written as k + 1
CLASS_NAMES: tuple[str, ...] = ("World", "Sports", "Business", "Sci/Tech")
# documents of the test split, and Corpus.content_hash() of the project's copy
# (shared/data/agnews/test.csv, sha256 d2a2cef4…): ids, texts and labels in order
AGNEWS_TEST_ROWS = 7600
AGNEWS_TEST_CONTENT_HASH = "3051e3c20dfc29c6fd5941d6d94220346e9dbb668802a4e5013a364d1596c320"
# seconds to wait for a TCP connection to the hub before calling it unreachable
HUB_CONNECT_TIMEOUT_S = 5.0
# variables that put the Hugging Face libraries offline
OFFLINE_VARIABLES: tuple[str, ...] = (
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
)

# loads the test split of one hub dataset id: an iterable of {"text": str, "label": int} records
Loader = Callable[[str], Iterable[Mapping[str, Any]]]


def cache_dir() -> Path:
    """``$NNCD_CACHE_DIR``, else ``$XDG_CACHE_HOME/nncd_ray``, else ``~/.cache/nncd_ray``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "nncd_ray"


def cached_agnews_path() -> Path:
    """Where the converted test split lives (it may not exist yet)."""
    return cache_dir() / "agnews" / "test.csv"


def offline_variable() -> str | None:
    """The name of the variable that puts the Hugging Face libraries offline, if one does."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return name
    return None


def agnews_rows(records: Iterable[Mapping[str, Any]]) -> Iterator[tuple[str, str, str]]:
    """``(label 1-based, title, description)`` rows of the original CSV from hub records
    ``{"text": title + " " + description, "label": 0-based}`` (see the module doc for the
    split of the text)."""
    for position, record in enumerate(records):
        text, label = record.get("text"), record.get("label")
        if not isinstance(text, str) or isinstance(label, bool) or not isinstance(label, int):
            raise InputError(
                f"AG News from the hub: record {position} is not {{'text': str, 'label': int}}: "
                f"{dict(record)!r:.200}"
            )
        if not 0 <= label < len(CLASS_NAMES):
            raise InputError(
                f"AG News from the hub: record {position} has label {label}, not 0-"
                f"{len(CLASS_NAMES) - 1}"
            )
        title, _, description = text.partition(" ")
        yield str(label + 1), title, description


def write_agnews_csv(records: Iterable[Mapping[str, Any]], path: Path) -> int:
    """Write hub records as the original CSV (quoted, no header) at ``path``, atomically; return
    the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    count = 0
    try:
        with partial.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
            for row in agnews_rows(records):
                writer.writerow(row)
                count += 1
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return count


def _check_classes(dataset: Any) -> None:
    """Refuse a dataset whose label names are not AG News's, in AG News's order."""
    features = getattr(dataset, "features", None)
    label = features.get("label") if isinstance(features, Mapping) else None
    names = getattr(label, "names", None)
    if names is not None and tuple(names) != CLASS_NAMES:
        raise InputError(f"AG News from the hub has classes {list(names)}, not {list(CLASS_NAMES)}")


def hub_loader(name: str) -> Iterable[Mapping[str, Any]]:
    """The test split of hub dataset ``name`` through ``datasets.load_dataset``."""
    import datasets

    dataset = datasets.load_dataset(name, split="test")
    _check_classes(dataset)
    records: Iterable[Mapping[str, Any]] = dataset
    return records


def hub_unreachable(timeout_s: float = HUB_CONNECT_TIMEOUT_S) -> str | None:
    """Why the hub (``$HF_ENDPOINT``, default huggingface.co) cannot be reached, or None.

    One TCP connection with a timeout: without it an offline machine spends about 45 s in
    huggingface_hub's retries and prints a dozen warnings before failing. Behind a proxy
    (``HTTPS_PROXY``/``HTTP_PROXY`` set) a direct connection proves nothing, so it is skipped.
    """
    if any(
        os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
    ):
        return None
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc}"
    return None


def _no_way(reason: str, remedy: str) -> DatasetNotFound:
    """The one-line error: why the hub is out of reach, and both ways out."""
    return DatasetNotFound(
        f"--protocol needs the AG News test set: none found locally (no --data, $NNCD_AGNEWS or "
        f"../shared/data/agnews/test.csv) and it cannot be fetched from the Hugging Face hub "
        f"({reason}); pass --data PATH/TO/agnews/test.csv (or set NNCD_AGNEWS), or {remedy} so "
        f"that it is fetched once into {cached_agnews_path()}"
    )


def fetch_agnews(
    *, loader: Loader | None = None, announce: Callable[[str], None] | None = None
) -> Path:
    """The cached AG News test CSV, fetched from the hub and converted first if it is missing.

    ``loader`` (default :func:`hub_loader`) is tried with each of :data:`HUB_DATASETS`;
    ``announce`` gets one line before a download. Raises DatasetNotFound (one line, both ways out)
    when the file is missing and cannot be fetched.
    """
    path = cached_agnews_path()
    if path.is_file():
        return path
    if loader is None:
        offline = offline_variable()
        if offline is not None:
            raise _no_way(f"{offline} is set", f"unset {offline} with network access")
        try:
            import datasets  # noqa: F401  (only to say early that it is missing)
        except ImportError:
            raise _no_way(
                "the datasets package is not installed",
                "install the data extra (pip install 'nncd_ray[data]') with network access",
            ) from None
        unreachable = hub_unreachable()
        if unreachable is not None:
            raise _no_way(unreachable, "retry with network access to the hub")
        loader = hub_loader
    if announce is not None:
        announce(f"fetching the AG News test split from the Hugging Face hub into {path}")
    errors = []
    for name in HUB_DATASETS:
        try:
            rows = write_agnews_csv(loader(name), path)
        except InputError:
            raise
        except Exception as exc:  # network, hub or dataset errors: try the next name
            text = str(exc).strip().splitlines()
            errors.append(f"{name}: {type(exc).__name__}: {text[0] if text else ''}"[:300])
            continue
        _check_fetched(path, rows)
        return path
    raise _no_way("; ".join(errors), "retry with network access to huggingface.co")


def _check_fetched(path: Path, rows: int) -> None:
    """Warn when the fetched documents are not those the project's figures were measured on."""
    digest = load_agnews(path).content_hash()
    if rows != AGNEWS_TEST_ROWS or digest != AGNEWS_TEST_CONTENT_HASH:
        log.warning(
            "the AG News test split fetched into %s (%d documents, content sha256 %s…) differs "
            "from the copy this project's figures were measured on (%d documents, %s…); the "
            "protocol splits and results may differ",
            path,
            rows,
            digest[:12],
            AGNEWS_TEST_ROWS,
            AGNEWS_TEST_CONTENT_HASH[:12],
        )


def default_data_path() -> Path | None:
    """``$NNCD_AGNEWS`` if set, else ``../shared/data/agnews/test.csv`` (from the working
    directory) when it exists, else None."""
    configured = os.environ.get(DATA_ENV)
    if configured:
        return Path(configured).expanduser()
    conventional = Path("..") / "shared" / "data" / "agnews" / "test.csv"
    return conventional if conventional.exists() else None


def agnews_path(
    data: str | Path | None = None, *, announce: Callable[[str], None] | None = None
) -> Path:
    """The AG News test CSV for ``--protocol``: ``data`` when given, else ``$NNCD_AGNEWS``, else
    ``../shared/data/agnews/test.csv``, else the user cache, fetched from the Hugging Face hub
    the first time (:func:`fetch_agnews`; ``announce`` gets one line before
    a download). Raises DatasetNotFound in one line when none of these works."""
    if data is not None:
        return Path(data).expanduser()
    local = default_data_path()
    if local is not None:
        return local
    return fetch_agnews(announce=announce)


def load_agnews(path: str | Path) -> Corpus:
    """The whole AG News CSV (a file, or the folder holding ``test.csv``) as one corpus."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "test.csv"
    if not file.exists():
        raise DatasetNotFound(
            f"AG News file not found: {file}; pass --data PATH/TO/agnews/test.csv (or set "
            f"{DATA_ENV})"
        )
    return load_corpus(
        file, format="csv", text_fields=("2", "3"), label_field="1", id_field=None, header=False
    )


__all__ = [
    "AGNEWS_TEST_CONTENT_HASH",
    "CACHE_ENV",
    "DATA_ENV",
    "HUB_DATASETS",
    "agnews_path",
    "agnews_rows",
    "cache_dir",
    "cached_agnews_path",
    "default_data_path",
    "fetch_agnews",
    "hub_loader",
    "load_agnews",
    "offline_variable",
    "write_agnews_csv",
]
