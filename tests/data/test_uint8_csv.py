"""The fast CSV parser: exact on any well-formed table, and precise about malformed lines."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bastion.data import uint8_csv
from bastion.data.errors import DataError
from bastion.data.uint8_csv import parse_uint8_csv


def to_csv(table: np.ndarray, header: bool, newline: str, final_newline: bool) -> bytes:
    lines = [",".join(f"c{i}" for i in range(table.shape[1]))] if header else []
    lines += [",".join(str(int(v)) for v in row) for row in table]
    return (newline.join(lines) + (newline if final_newline else "")).encode()


tables = hnp.arrays(
    np.uint8, st.tuples(st.integers(1, 25), st.integers(1, 9)), elements=st.integers(0, 255)
)


@settings(max_examples=100, deadline=None)
@given(
    table=tables,
    header=st.booleans(),
    newline=st.sampled_from(["\n", "\r\n"]),
    final_newline=st.booleans(),
    block_bytes=st.sampled_from([1, 7, 64, 1 << 24]),
)
def test_round_trip(
    table: np.ndarray, header: bool, newline: str, final_newline: bool, block_bytes: int
) -> None:
    raw = to_csv(table, header, newline, final_newline)
    with mock.patch.object(uint8_csv, "_BLOCK_BYTES", block_bytes):
        parsed = parse_uint8_csv(raw, columns=table.shape[1], source="t.csv")
    assert parsed.dtype == np.uint8
    np.testing.assert_array_equal(parsed, table)


def test_agrees_with_loadtxt_on_the_shipped_mnist_test_file() -> None:
    from bastion.data.mnist import locate_mnist_csv_dir

    path = locate_mnist_csv_dir() / "mnist_test.csv"
    raw = path.read_bytes()
    head = b"".join(raw.splitlines(keepends=True)[:301])
    reference = np.loadtxt(path, delimiter=",", skiprows=1, max_rows=300, dtype=np.int64)
    np.testing.assert_array_equal(parse_uint8_csv(head, 785, "head"), reference)


def test_empty_input_gives_no_rows() -> None:
    assert parse_uint8_csv(b"a,b\n", columns=2, source="t.csv").shape == (0, 2)
    assert parse_uint8_csv(b"", columns=2, source="t.csv").shape == (0, 2)


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("a,b\n1,2\n3,4,5\n", 3, "found 3 values"),
        ("a,b\n1,2\n3\n", 3, "found 1 values"),
        ("1,2\n3,x\n", 2, "non-digit"),
        ("1,2\n-3,4\n", 2, "unexpected character '-'"),
        ("1,2\n1.5,4\n", 2, "unexpected character '.'"),
        ("1,2\n3, 4\n", 2, "unexpected character ' '"),
        ("1,2\n1,256\n", 2, "value 256 is above 255"),
        ("1,2\n1,0001\n", 2, "value with more than 3 digits"),
        ("1,2\n,4\n", 2, "empty value"),
        ("1,2\n\n3,4\n", 2, "found 1 values"),
    ],
)
def test_malformed_lines_are_named(text: str, line: int, problem: str) -> None:
    with pytest.raises(DataError, match=f"t.csv, line {line}: {problem}"):
        parse_uint8_csv(text.encode(), columns=2, source="t.csv")


def test_line_numbers_count_across_blocks() -> None:
    text = "h,h\n" + "1,2\n" * 50 + "1,999\n"
    with (
        mock.patch.object(uint8_csv, "_BLOCK_BYTES", 16),
        pytest.raises(DataError, match="line 52: value 999"),
    ):
        parse_uint8_csv(text.encode(), columns=2, source="t.csv")
