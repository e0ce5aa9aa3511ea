"""Experiments: run folders with their manifest, index and leases (:mod:`.run`), multi-seed
sweeps and their executors on one machine or a Ray cluster (:mod:`.sweep`) and TensorBoard
logging (:mod:`.tracking`). It builds on :mod:`stablebptt.training`."""
