"""Experiments: run folders with their results and index (:mod:`.run`), claims on runs in
progress (:mod:`.leases`), what a run records of the process that made it
(:mod:`.manifest`), multi-seed sweeps and their executors on one machine or a Ray cluster
(:mod:`.sweep`) and TensorBoard logging (:mod:`.tracking`). It builds on
:mod:`stablebptt.training`."""
