"""The ml_pipelines service's use cases.

- ``registry``: models, versions, off-policy evaluation and promotion;
- ``evaluation``: ``:evaluate``, a version against the promoted one on the logged decisions;
- ``training``: training runs (train offline on the log, export a CANDIDATE version);
- ``backfill``: feature backfills (replay the signal log into daily feature rows).
"""
