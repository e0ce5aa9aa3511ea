"""The engine: a flow as gates (:mod:`.gates`), the forward problem (:mod:`.unroll`), backward
strategies (:mod:`.backward`), controller hooks (:mod:`.hooks`) and the entry point
:func:`.engine.value_and_update`. It knows nothing of particular problems."""

from .backward import Autodiff, ReverseSweep, Strategy, candidates  # noqa: F401
from .engine import (  # noqa: F401
    choose_backward,
    field_stats,
    flow_update,
    naive_combined,
    select_backward,
    tree_norm,
    value_and_update,
)
from .gates import COMBINERS, GATES, MODES, Flow, Gates, as_flow  # noqa: F401
from .unroll import check_problem_inputs, evaluate_loss, rollout, unrolled_loss  # noqa: F401
