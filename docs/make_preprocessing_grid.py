"""Draw docs/preprocessing.jpg: the same photographs with each `preprocessing` setting.

Run: .venv/bin/python docs/make_preprocessing_grid.py
"""

import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

from fundus_tl.imaging import PREPROCESSING, prepare
from fundus_tl.synthetic import render_fundus

SIZE = 224


def main() -> None:
    rows = []
    for grade, (height, width) in zip((0, 2, 4), ((300, 460), (340, 480), (260, 400)), strict=True):
        rgb = cv2.cvtColor(render_fundus(grade, np.random.default_rng(grade), (height, width)), cv2.COLOR_BGR2RGB)
        original = cv2.resize(rgb, (SIZE * width // height, SIZE), interpolation=cv2.INTER_AREA)
        spare = int(SIZE * 1.6) - original.shape[1]
        original = np.pad(original, ((0, 0), (spare // 2, spare - spare // 2), (0, 0)), constant_values=255)
        tiles = [original] + [prepare(rgb, SIZE, name) for name in PREPROCESSING]
        rows.append(np.hstack([np.pad(tile, ((4, 4), (4, 4), (0, 0)), constant_values=255) for tile in tiles]))
    grid = np.vstack(rows)
    header = np.full((28, grid.shape[1], 3), 255, np.uint8)
    x = 8
    for label, width in zip(
        ["original"] + [f"preprocessing: {name}" for name in PREPROCESSING],
        [rows[0].shape[1] - 3 * (SIZE + 8)] + [SIZE + 8] * 3,
        strict=True,
    ):
        cv2.putText(header, label, (x, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        x += width
    out = Path(__file__).with_name("preprocessing.jpg")
    cv2.imwrite(str(out), cv2.cvtColor(np.vstack([header, grid]), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
