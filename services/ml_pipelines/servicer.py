"""gRPC servicers of the ml_pipelines service: thin adapters over its domain logic."""

from tips.ml_pipelines.v1 import ml_pipelines_service_pb2_grpc


class MlPipelinesServicer(ml_pipelines_service_pb2_grpc.MlPipelinesServiceServicer):
    """`tips.ml_pipelines.v1.MlPipelinesService`.

    Every RPC still comes from the generated base class, which the kernel
    answers with UNIMPLEMENTED and a message naming the RPC.
    """
