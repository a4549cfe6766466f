"""Decode-once image cache: uint8 shards on disk, read back through memory maps.

A shard is ``shard-NNN.npy`` (N, S, S, 3 RGB uint8) plus ``shard-NNN.tsv``, one row per input
file with its row number and status. Images that cannot be decoded keep a zero row and a
reason, so nothing disappears silently.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .imaging import UnreadableImage, load_image
from .io import atomic_path

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["key", "path", "row", "status", "reason"]
SUMMARY_KINDS = 8  # kinds of skip reason counted in the log line; skipped.tsv has them all


def index_path(shard_npy: str | os.PathLike) -> Path:
    """The index TSV that belongs to a shard array."""
    return Path(shard_npy).with_suffix(".tsv")


def build_shard(
    items: pd.DataFrame,
    out_npy: str | os.PathLike,
    out_index: str | os.PathLike,
    size: int,
    preprocessing: str,
    threads: int = 1,
) -> pd.DataFrame:
    """Decode `items` (columns key, path) into one shard; return the index that was written.

    Rows go to the file with ``pwrite`` as they are decoded, so peak memory is one image per thread
    whatever the shard size; unlike stores through a memory map, written pages do not count
    towards the process's resident memory. Both files appear under their final names only when
    complete.
    """
    items = items.sort_values("key").reset_index(drop=True)
    cv2.setNumThreads(1)
    started = time.perf_counter()
    shape = (len(items), size, size, 3)
    row_bytes = size * size * 3
    with atomic_path(out_npy, suffix=".npy") as tmp_npy, open(tmp_npy, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "|u1", "fortran_order": False, "shape": shape})
        offset = handle.tell()
        handle.truncate(offset + len(items) * row_bytes)  # flushes the header; skipped rows stay zero
        descriptor = handle.fileno()

        def decode_row(row: int) -> tuple[str, str]:
            try:
                image = load_image(items.at[row, "path"], size, preprocessing)
            except UnreadableImage as error:
                return "skipped", str(error)
            except OSError as error:
                return "skipped", f"cannot read file ({error.strerror or error})"
            if os.pwrite(descriptor, image, offset + row * row_bytes) != row_bytes:
                raise OSError(f"short write of row {row} to {tmp_npy}")
            return "ok", ""

        with ThreadPoolExecutor(max_workers=max(threads, 1)) as pool:
            results = list(pool.map(decode_row, range(len(items))))
        os.fsync(descriptor)
    index = items[["key", "path"]].copy()
    index["row"] = range(len(items))
    index["status"] = [status for status, _ in results]
    index["reason"] = [reason for _, reason in results]
    with atomic_path(out_index) as tmp_index:
        index.to_csv(tmp_index, sep="\t", index=False)
    seconds = time.perf_counter() - started
    ok = int((index["status"] == "ok").sum())
    log.info(
        "cached %d of %d images at %d px (%s) in %.1f s, %.1f img/s with %d threads",
        ok,
        len(index),
        size,
        preprocessing,
        seconds,
        len(index) / max(seconds, 1e-9),
        threads,
    )
    return index


def read_index(index_file: str | os.PathLike) -> pd.DataFrame:
    """Load a shard index; an empty shard gives an empty table with the right columns."""
    table = pd.read_csv(index_file, sep="\t", dtype={"reason": str}, keep_default_na=False)
    return table.reindex(columns=INDEX_COLUMNS)


class CachedImages:
    """All usable images of a set of shards, addressable by key.

    Rows are fetched with positioned reads (``pread``) into a fresh batch array rather than
    through memory maps, so a training process keeps no shard pages mapped: its resident memory
    does not grow with the size of the cache, while repeated epochs still come from the page cache.
    """

    def __init__(self, shard_files: list[str | os.PathLike]):
        self.shard_files = sorted(map(str, shard_files))
        self._files: list[tuple[int, int]] = []  # (descriptor, offset of row 0) per shard
        self.image_shape: tuple[int, ...] = ()
        tables = []
        for number, shard in enumerate(self.shard_files):
            with open(shard, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(handle)
                offset = handle.tell()
            if dtype != np.uint8 or len(shape) != 4:
                raise ValueError(f"{shard}: expected a (N, S, S, 3) uint8 cache shard, found {shape} {dtype}")
            self.image_shape = tuple(shape[1:])
            self._files.append((os.open(shard, os.O_RDONLY), offset))
            table = read_index(index_path(shard))
            table["shard"] = number
            tables.append(table)
        index = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=INDEX_COLUMNS)
        self.skipped = index[index["status"] != "ok"].reset_index(drop=True)
        self.index = index[index["status"] == "ok"].set_index("key")

    def __del__(self) -> None:
        for descriptor, _ in getattr(self, "_files", []):
            os.close(descriptor)

    def __getstate__(self) -> dict:
        """Pickle without the file descriptors: a spawned DataLoader worker reopens the shards."""
        state = self.__dict__.copy()
        state["_files"] = [offset for _, offset in self._files]
        return state

    def __setstate__(self, state: dict) -> None:
        offsets = state.pop("_files")
        self.__dict__.update(state)
        self._files = [
            (os.open(shard, os.O_RDONLY), offset) for shard, offset in zip(self.shard_files, offsets, strict=True)
        ]

    def __contains__(self, key: str) -> bool:
        return key in self.index.index

    def keys(self) -> list[str]:
        return list(self.index.index)

    def get(self, keys: list[str] | np.ndarray) -> np.ndarray:
        """Images for `keys` as one (B, S, S, 3) uint8 array, in the order asked."""
        locations = self.index.loc[list(keys), ["shard", "row"]].to_numpy()
        batch = np.empty((len(locations), *self.image_shape), np.uint8)
        row_bytes = batch[0].nbytes if len(batch) else 0
        for target, (shard, row) in zip(batch, locations, strict=True):
            descriptor, offset = self._files[shard]
            if os.preadv(descriptor, [memoryview(target).cast("B")], offset + int(row) * row_bytes) != row_bytes:
                raise OSError(f"{self.shard_files[shard]}: row {row} is incomplete; delete the shard to rebuild it")
        return batch


def skipped_files(
    scan_skipped: list[tuple[str, str]], index_files: list[str | os.PathLike], out_tsv: str | os.PathLike
) -> pd.DataFrame:
    """Write the skip report: files left out by the scan plus files that failed to decode.

    A file that fails in several caches (two image sizes) is listed once.
    """
    rows = [{"path": path, "reason": reason, "stage": "scan"} for path, reason in scan_skipped]
    for index_file in index_files:
        index = read_index(index_file)
        failed = index[index["status"] != "ok"]
        rows.extend(
            {"path": path, "reason": reason, "stage": "decode"}
            for path, reason in zip(failed["path"], failed["reason"], strict=True)
        )
    report = pd.DataFrame(rows, columns=["path", "reason", "stage"]).drop_duplicates(["path", "reason"])
    with atomic_path(out_tsv) as tmp:
        report.to_csv(tmp, sep="\t", index=False)
    by_kind = report["reason"].map(reason_kind).value_counts()
    shown = "; ".join(f"{count} x {kind}" for kind, count in by_kind.head(SUMMARY_KINDS).items())
    if len(by_kind) > SUMMARY_KINDS:
        shown += f"; {len(by_kind) - SUMMARY_KINDS} more kinds"
    log.info("skipped %d files%s (every file and reason: %s)", len(report), f": {shown}" if shown else "", out_tsv)
    return report


def reason_kind(reason: str) -> str:
    """A skip reason without the names and numbers in it, so that the log can count alike reasons."""
    return re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'...'", reason))


def file_sha1(path: str | os.PathLike) -> str:
    """SHA-1 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def cross_split_duplicates(index_files: list[str | os.PathLike], out_tsv: str | os.PathLike) -> pd.DataFrame:
    """Write pairs of byte-identical files that sit in different splits (train vs holdout/test).

    A duplicate across the split boundary makes holdout metrics optimistic, so it is reported.
    Only files whose size matches a file of another split can be identical, so only those are
    hashed: the check costs one ``stat`` per image plus a hash of the few candidates, and the
    cache jobs hash nothing.
    """
    tables = [read_index(path) for path in index_files]
    index = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=INDEX_COLUMNS)
    index = index[index["status"] == "ok"].drop_duplicates("path")
    index = index.assign(
        split=index["key"].str.split("/", n=1).str[0], size=[os.path.getsize(p) for p in index["path"]]
    )
    candidates = index[index.groupby("size")["split"].transform("nunique") > 1]
    candidates = candidates.assign(sha1=[file_sha1(path) for path in candidates["path"]])
    rows = []
    for sha1, group in candidates.groupby("sha1"):
        if group["split"].nunique() > 1:
            first = group.iloc[0]
            rows.extend(
                {"sha1": sha1, "path": other["path"], "split": other["split"], "same_as": first["path"]}
                for _, other in group.iloc[1:].iterrows()
                if other["split"] != first["split"]
            )
    report = pd.DataFrame(rows, columns=["sha1", "path", "split", "same_as"])
    with atomic_path(out_tsv) as tmp:
        report.to_csv(tmp, sep="\t", index=False)
    log.info("%d of %d images share their size with a file of another split; hashed them", len(candidates), len(index))
    if len(report):
        log.warning("%d files are byte-identical to a file of another split; see %s", len(report), out_tsv)
    return report
