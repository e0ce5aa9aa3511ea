"""stablebptt: stabilised backpropagation through time for controllers in differentiable simulators.

Schnell & Thuerey, "Stabilizing Backpropagation Through Time to Learn Complex Physics", ICLR 2024.
"""
from .flow import Flow, naive_combined, value_and_update, rollout, evaluate_loss  # noqa: F401
from .losses import TrajectoryLoss  # noqa: F401
from .config import RunConfig  # noqa: F401

__version__ = "0.1.0"
