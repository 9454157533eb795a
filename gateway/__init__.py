"""The REST/JSON edge of the mesh.

For now: liveness (``/healthz``), readiness (``/readyz``: every upstream
reports SERVING on gRPC health) and google.rpc.Status errors for unknown
paths. Descriptor-driven REST transcoding builds on ``create_app``'s route
list and middleware stack.
"""
