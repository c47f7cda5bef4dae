"""Deployment: a study's winner as files a hospital PC can run.

:mod:`.export` writes ONNX (and INT8 where it measures faster), a ``torch.export`` program
and the model card (:mod:`.card`), judged by :mod:`.verdict`; :mod:`.predict` segments images
with the exported model in ONNX Runtime alone; :mod:`.samples` hands the report example slices.
"""
