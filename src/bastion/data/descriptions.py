"""``descriptions``: a small text-classification dataset from text that ships with scikit-learn.

scikit-learn installs the description of each of its datasets as an .rst file
(``sklearn/datasets/descr/*.rst``): prose, attribute lists and references. Each line of
prose is an example; its label is the dataset the file describes (iris, wine, 20
newsgroups, ...). Nothing is downloaded. Lines are short and some are shared boilerplate
("Number of Attributes ..."), so the task is real but not trivial.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import sklearn
from sklearn.model_selection import train_test_split

from bastion.data.types import Dataset

DESCR_DIR = Path(sklearn.__file__).parent / "datasets" / "descr"


def prose_lines(text: str, min_words: int = 4) -> list[str]:
    """Lines with at least ``min_words`` words, without reST markup, tables or code."""
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith((">>>", "...", "..", "===", "---")):
            continue
        line = " ".join(re.sub(r"[*`:|]", " ", line).strip(" -").split())
        if len(re.findall(r"[A-Za-z]{2,}", line)) >= min_words:
            lines.append(line)
    return lines


def load_descriptions(min_lines: int = 20, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """Lines of every description with at least ``min_lines`` of them, split stratified."""
    texts: list[str] = []
    labels: list[int] = []
    files = sorted(DESCR_DIR.glob("*.rst"))
    kept = [(f.stem, lines) for f in files if len(lines := prose_lines(f.read_text())) >= min_lines]
    for label, (_name, lines) in enumerate(kept):
        texts += lines
        labels += [label] * len(lines)
    x_train, x_test, y_train, y_test = train_test_split(
        np.array(texts),
        np.array(labels, dtype=np.int64),
        test_size=test_fraction,
        stratify=labels,
        random_state=seed,
    )
    return Dataset("sklearn-descriptions", x_train, y_train, x_test, y_test, num_classes=len(kept))
