"""The study and its trials, on Optuna's storage.

:mod:`.settings` (what a study was given) and :mod:`.storage` (SQLite or PostgreSQL) come
first; :mod:`.study` creates or opens a study and its :class:`~.study.Context`; each trial
(:mod:`.trial`) samples a shape, projects it onto the budget (:mod:`.projection`), fine-tunes
and scores it; :mod:`.runner` is one worker's loop, counted by :mod:`.quota` and shown by
:mod:`.progress`; :mod:`.best` names the answer and :mod:`.polish` fine-tunes the finalists
longer. Weights travel as Optuna artifacts (:mod:`.weights`); :mod:`.anchors` keeps this
machine's latency scale.
"""
