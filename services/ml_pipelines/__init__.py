"""The ml_pipelines service.

Batch features, training, off-policy evaluation, the model registry and promotion.
"""
