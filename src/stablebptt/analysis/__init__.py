"""Analysis of finished runs: tables of results (:mod:`.results`), seed-paired statistics
(:mod:`.stats`), figures (:mod:`.plots`), seed-paired comparisons of gradient flows
(:mod:`.comparison`), the gradient diagnosis (:mod:`.diagnose`; its figure: :mod:`.diagnose_figure`) and animations
(:mod:`.animate`). It builds on :mod:`stablebptt.experiments`."""
