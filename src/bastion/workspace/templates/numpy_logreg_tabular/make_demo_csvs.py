"""Write demo CSV tables for two hospitals, so the template runs without data of your own.

    python make_demo_csvs.py OUT_DIR

writes OUT_DIR/hospital-a.csv (1,078 rows) and OUT_DIR/hospital-b.csv (719 rows): disjoint
parts of scikit-learn's bundled digits, 64 pixel columns scaled to 0..1 and a 'label'
column. A real site points `--data records=PATH` at its own table instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def main(out: Path) -> None:
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    x, y = digits.data[order] / 16.0, digits.target[order]
    cut = int(len(y) * 0.6)
    header = ",".join([f"p{i}" for i in range(x.shape[1])] + ["label"])
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("hospital-a", slice(0, cut)), ("hospital-b", slice(cut, None))):
        table = np.column_stack([x[rows], y[rows]])
        formats = ["%.4f"] * x.shape[1] + ["%d"]
        np.savetxt(
            out / f"{name}.csv", table, delimiter=",", header=header, comments="", fmt=formats
        )
        print(f"wrote {out / f'{name}.csv'}: {len(y[rows])} rows")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
