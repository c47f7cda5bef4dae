"""How a study runs and how a candidate is measured, one subpackage per stage.

:mod:`.data` (data sets) and :mod:`.latency` (the CPU harness) feed :mod:`.training`
(fine-tunes, the baseline) and :mod:`.study` (the Optuna study and its trials), whose winner
:mod:`.deploy` exports; :mod:`.servers` run beside a study (the latency agent, the report
server) and :mod:`.cli` is the command line. The root keeps what every stage uses: the
cache (:mod:`.cache`) and a network's two ONNX forms (:mod:`.onnx_io`, :mod:`.quantize`).
Imports run downhill in that order (tests/test_layout.py).
"""
