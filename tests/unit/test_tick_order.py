"""The collector's fast orderings: sort_order (fingerprints sorted with their row numbers in
their lowest bits) and take_rows (structured rows gathered as machine words), against numpy's
own argsort and indexing."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flowscope import abi
from flowscope.collect.collector import sort_order
from flowscope.model import take_rows

U64 = np.uint64
ODD = np.dtype({"names": ["a", "b"], "formats": ["u1", "<u2"], "offsets": [0, 2], "itemsize": 5})
"""Rows that are no whole number of words, with a gap: the other path of take_rows."""


@given(
    upper=hnp.arrays(np.uint64, st.integers(0, 300), elements=st.integers(0, 7)),
    lower=st.data(),
)
@example(upper=np.array([3, 3, 3, 1, 1, 0], U64), lower=None)
def test_sort_order_sorts_fingerprints_that_share_their_upper_bits(
    upper: np.ndarray, lower: st.DataObject | None
) -> None:
    """Few distinct upper parts, so many fingerprints differ only in the bits the row numbers
    take: each such run must still come out in order."""
    n = len(upper)
    if lower is None:
        low = np.arange(n, dtype=U64)[::-1].copy()
    else:
        low = lower.draw(hnp.arrays(np.uint64, n, elements=st.integers(0, 2**20)))
    fp = (upper << U64(40)) | low
    order, ranked = sort_order(fp)
    assert sorted(order.tolist()) == list(range(n))
    assert (ranked == fp[order]).all()
    assert (ranked == np.sort(fp)).all()


@given(hnp.arrays(np.uint64, st.integers(0, 500), elements=st.integers(0, 2**64 - 1)))
def test_sort_order_sorts_any_fingerprints(fp: np.ndarray) -> None:
    order, ranked = sort_order(fp)
    assert sorted(order.tolist()) == list(range(len(fp)))
    assert (ranked == np.sort(fp)).all() and (ranked == fp[order]).all()


@given(
    data=st.data(),
    n=st.integers(0, 50),
    dtype=st.sampled_from([abi.KEY4_DTYPE, abi.KEY6_DTYPE, abi.EVENT_DTYPE, ODD]),
)
def test_take_rows_is_indexing(data: st.DataObject, n: int, dtype: np.dtype) -> None:
    raw = data.draw(hnp.arrays(np.uint8, n * dtype.itemsize))
    rows = raw.view(dtype)
    if data.draw(st.booleans()):
        index = data.draw(hnp.arrays(np.bool_, n))
    else:
        size = st.integers(0, 60) if n else st.just(0)
        index = data.draw(hnp.arrays(np.intp, size, elements=st.integers(0, max(0, n - 1))))
    got = take_rows(rows, index)
    want = rows[index]
    assert got.dtype == dtype and len(got) == len(want)
    for name in dtype.names:
        assert (got[name] == want[name]).all()
