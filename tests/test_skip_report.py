import logging
from pathlib import Path

import pandas as pd

from fundus_tl.cache import SUMMARY_KINDS, reason_kind, skipped_files


def test_the_log_counts_alike_reasons_once_and_the_report_lists_every_file(tmp_path: Path, caplog):
    scan_skipped = [(f"/d/labels.csv line {line}", f"no image file for '{line}_left' in /d/x") for line in range(50)]
    scan_skipped += [("/d/.DS_Store", "hidden file"), ("/d/a.jpeg", "label 7 of image 'a' is outside 0..4")]
    scan_skipped += [(f"/d/{number}.txt", f"kind {number} of something 'odd'") for number in range(3)]
    with caplog.at_level(logging.INFO, logger="fundus_tl.cache"):
        report = skipped_files(scan_skipped, [], tmp_path / "skipped.tsv")
    assert len(report) == len(pd.read_csv(tmp_path / "skipped.tsv", sep="\t")) == len(scan_skipped)
    line = caplog.messages[-1]
    assert line.startswith(f"skipped {len(scan_skipped)} files: 50 x no image file for '...' in /d/x; ")
    assert "_left" not in line and str(tmp_path / "skipped.tsv") in line
    assert line.count(" x ") == 4 and "3 x kind N of something '...'" in line
    assert reason_kind("label 7 of image 'a' is outside 0..4") == "label N of image '...' is outside N..N"

    many = [(f"/d/{word}", f"{word} is wrong") for word in "abcdefghijkl"[: SUMMARY_KINDS + 2]]
    with caplog.at_level(logging.INFO, logger="fundus_tl.cache"):
        skipped_files(many, [], tmp_path / "skipped.tsv")
    assert caplog.messages[-1].count(" x ") == SUMMARY_KINDS and "; 2 more kinds" in caplog.messages[-1]
