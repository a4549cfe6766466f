"""Small file helpers: nothing half-written ever appears under a final name."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield str(tmp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(data: Any, path: str | os.PathLike) -> None:
    """Write indented JSON atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def setup_logging(log_file: str | os.PathLike | None) -> None:
    """Send library log records to the rule's log file (and stderr), one line per record."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], error: BaseException, trace) -> None:
    """An error that ends the job goes to its log file too, not only to Snakemake's console."""
    logging.getLogger("fundus_tl").critical("stopped by %s: %s", kind.__name__, error, exc_info=(kind, error, trace))


def write_text_if_changed(path: str | os.PathLike, text: str) -> bool:
    """Write `text` atomically unless the file already holds it (its mtime then stays); True if written."""
    path = Path(path)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return True
