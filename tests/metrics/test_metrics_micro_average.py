"""micro_average_accuracy and summarize(test_sizes=...) against hand-computed values."""

import pytest

from ricordo.errors import DataError
from ricordo.metrics import average_accuracy, micro_average_accuracy, summarize

A = [
    [0.9, 0.1, 0.0],
    [0.6, 0.8, 0.2],
    [0.5, 0.7, 0.9],
]
B = [0.05, 0.1, 0.1]


def test_micro_average_weights_each_test_sample_equally() -> None:
    # 10, 30 and 60 test samples: 5 + 21 + 54 of 100 right at the end.
    assert micro_average_accuracy(A, [10, 30, 60]) == pytest.approx(0.80)
    # The macro average weighs chunks equally: (0.5 + 0.7 + 0.9) / 3.
    assert average_accuracy(A) == pytest.approx(0.70)


def test_micro_equals_macro_for_equal_sizes_and_ignores_empty_chunks() -> None:
    assert micro_average_accuracy(A, [7, 7, 7]) == pytest.approx(average_accuracy(A))
    assert micro_average_accuracy(A, [0, 1, 1]) == pytest.approx((0.7 + 0.9) / 2)
    assert micro_average_accuracy([[0.25]], [4]) == pytest.approx(0.25)


def test_micro_average_is_the_pooled_accuracy() -> None:
    # 2 chunks: 3/4 right on chunk 0, 1/2 right on chunk 1 -> 4 of 6 samples right.
    assert micro_average_accuracy([[0.75, 0.0], [0.75, 0.5]], [4, 2]) == pytest.approx(4 / 6)


@pytest.mark.parametrize("sizes", [[1, 2], [1, 2, 3, 4], [0, 0, 0], [5, -1, 5]])
def test_micro_average_rejects_bad_sizes(sizes: list[int]) -> None:
    with pytest.raises(DataError, match="test sizes"):
        micro_average_accuracy(A, sizes)


def test_summarize_adds_micro_average_only_with_test_sizes() -> None:
    without = summarize(A, B)
    assert "micro_average_accuracy" not in without
    with_sizes = summarize(A, B, [10, 30, 60])
    assert with_sizes["micro_average_accuracy"] == pytest.approx(0.80)
    assert {k: v for k, v in with_sizes.items() if k != "micro_average_accuracy"} == without
    assert summarize([[0.5]], [0.1], [3])["forgetting"] is None
