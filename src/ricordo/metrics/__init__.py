"""Continual-learning metrics from the accuracy matrix."""

from ricordo.metrics.continual import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    learning_accuracy,
    micro_average_accuracy,
    summarize,
)

__all__ = [
    "average_accuracy",
    "average_incremental_accuracy",
    "backward_transfer",
    "forgetting",
    "forward_transfer",
    "learning_accuracy",
    "micro_average_accuracy",
    "summarize",
]
