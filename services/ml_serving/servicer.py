"""gRPC servicers of the ml_serving service: thin adapters over its domain logic."""

from tips.ml_serving.v1 import ml_serving_service_pb2_grpc


class MlServingInternalServicer(ml_serving_service_pb2_grpc.MlServingInternalServiceServicer):
    """`tips.ml_serving.v1.MlServingInternalService`.

    Every RPC still comes from the generated base class, which the kernel
    answers with UNIMPLEMENTED and a message naming the RPC.
    """
