"""Training: fine-tunes and their loss, distillation and Dice (:mod:`.train`), the dense baseline
trained once and cached (:mod:`.baseline`), and per-patient figures (:mod:`.metrics`).

Knows nothing of studies: :mod:`..study` calls it, never the other way round.
"""
