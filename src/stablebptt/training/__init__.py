"""Training: the configuration of a run (:mod:`.config`, :class:`RunConfig`), the optimizers
(:mod:`.optim`), the jit-able training program (:mod:`.trainer`, :func:`make_train`) and the
host loop that runs it for one or many seeds or lanes, with checkpoints (:mod:`.runner`).
It builds on :mod:`stablebptt.core` and :mod:`stablebptt.problems` only."""
