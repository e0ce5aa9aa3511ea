"""Experiment tracking: per-epoch metrics to TensorBoard, as an ``on_epoch`` callback.

    from stablebptt.experiments.tracking import TensorBoard
    with TensorBoard("tb/my-run") as board:
        run(config, seed, root, on_epoch=board)                     # or runner.train(..., on_epoch=board)
    stablebptt train cartpole --tensorboard tb                       # the same from the command line

Every row an epoch reports becomes scalars at step = epoch: ``loss``, ``update_norm`` and, where
computed, ``cos_mg``, ``sign_agree``, ``train_loss``, ``test_loss``. With several runs (seeds,
lanes) each run writes under its own tag prefix ``run<k>/``. Written with tensorboardX (the
``tensorboard`` extra), read with ``tensorboard --logdir``.
"""

from __future__ import annotations

import math
from pathlib import Path


class TensorBoard:
    """``on_epoch(epoch, rows)`` callback writing each row's finite metrics as scalars."""

    def __init__(self, logdir: str | Path, prefix: str = ""):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:  # pragma: no cover - depends on the extra
            raise ImportError('TensorBoard logging needs tensorboardX: pip install "stablebptt[tensorboard]"') from e
        self.logdir = Path(logdir)
        self.prefix = prefix
        self.writer = SummaryWriter(str(self.logdir))

    def __call__(self, epoch: int, rows: list) -> None:
        for k, row in enumerate(rows):
            if row is None:
                continue
            tag = self.prefix + (f"run{k}/" if len(rows) > 1 else "")
            for name, value in row.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(tag + name, float(value), global_step=int(epoch))
        self.writer.flush()

    def close(self) -> None:
        """Write everything still queued and close the event file."""
        self.writer.close()

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
