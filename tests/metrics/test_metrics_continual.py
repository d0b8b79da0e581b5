"""CL metrics against hand-computed values on small matrices."""

import pytest

from ricordo.errors import DataError
from ricordo.metrics import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    learning_accuracy,
    summarize,
)

# After update 0: chunk0 0.9; after 1: chunk0 dropped to 0.6, chunk1 0.8; after 2: 0.5, 0.7, 0.9.
A = [
    [0.9, 0.1, 0.0],
    [0.6, 0.8, 0.2],
    [0.5, 0.7, 0.9],
]
B = [0.05, 0.1, 0.1]


def test_average_accuracy_is_the_mean_of_the_last_row() -> None:
    assert average_accuracy(A) == pytest.approx((0.5 + 0.7 + 0.9) / 3)


def test_average_incremental_accuracy_averages_seen_chunks_per_row() -> None:
    expected = (0.9 + (0.6 + 0.8) / 2 + (0.5 + 0.7 + 0.9) / 3) / 3
    assert average_incremental_accuracy(A) == pytest.approx(expected)


def test_learning_accuracy_is_the_diagonal_mean() -> None:
    assert learning_accuracy(A) == pytest.approx((0.9 + 0.8 + 0.9) / 3)


def test_forgetting_uses_the_best_earlier_accuracy() -> None:
    # chunk0: max(0.9, 0.6) - 0.5 = 0.4; chunk1: max(0.8) - 0.7 = 0.1
    assert forgetting(A) == pytest.approx((0.4 + 0.1) / 2)


def test_forgetting_with_later_improvement_takes_the_maximum() -> None:
    matrix = [[0.5, 0.0, 0.0], [0.8, 0.6, 0.0], [0.7, 0.6, 0.9]]
    assert forgetting(matrix) == pytest.approx(((0.8 - 0.7) + 0.0) / 2)


def test_backward_transfer_compares_final_to_just_learned() -> None:
    assert backward_transfer(A) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)


def test_forward_transfer_uses_the_previous_row_and_initial_accuracy() -> None:
    assert forward_transfer(A, B) == pytest.approx(((0.1 - 0.1) + (0.2 - 0.1)) / 2)


def test_single_update_has_no_transfer_or_forgetting() -> None:
    metrics = summarize([[0.7]], [0.1])
    assert metrics["average_accuracy"] == pytest.approx(0.7)
    assert metrics["forgetting"] is None
    assert metrics["backward_transfer"] is None
    assert metrics["forward_transfer"] is None


def test_non_square_matrix_is_rejected() -> None:
    with pytest.raises(DataError, match="square"):
        average_accuracy([[0.1, 0.2]])


def test_initial_accuracies_must_match_the_chunks() -> None:
    with pytest.raises(DataError, match="one value per chunk"):
        forward_transfer(A, [0.1])
