"""The ml_serving service.

The model repository and the scoring runtime (Triton, or ONNX Runtime in process). Stateless.
"""
