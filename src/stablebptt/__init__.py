"""stablebptt: stabilised backpropagation through time for controllers in differentiable simulators.

Schnell & Thuerey, "Stabilizing Backpropagation Through Time to Learn Complex Physics", ICLR 2024.
"""

from ._version import __version__
from .analysis.comparison import Comparison, compare
from .analysis.comparison import load as load_comparison
from .core import (
    Autodiff,
    Flow,
    ReverseSweep,
    Strategy,
    candidates,
    choose_backward,
    evaluate_loss,
    naive_combined,
    rollout,
    select_backward,
    value_and_update,
)
from .core.losses import TrajectoryLoss
from .experiments.run import load_run
from .training.config import RunConfig
from .training.optim import Optimizer
from .training.trainer import make_train

__all__ = [
    "__version__",
    "Autodiff",
    "Comparison",
    "Flow",
    "Optimizer",
    "ReverseSweep",
    "RunConfig",
    "Strategy",
    "TrajectoryLoss",
    "candidates",
    "choose_backward",
    "compare",
    "evaluate_loss",
    "load_comparison",
    "load_run",
    "make_train",
    "naive_combined",
    "rollout",
    "select_backward",
    "value_and_update",
]
