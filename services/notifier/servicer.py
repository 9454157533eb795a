"""gRPC servicers of the notifier service: thin adapters over its domain logic."""

from tips.notifier.v1 import notifier_service_pb2_grpc


class NotifierServicer(notifier_service_pb2_grpc.NotifierServiceServicer):
    """`tips.notifier.v1.NotifierService`.

    Every RPC still comes from the generated base class, which the kernel
    answers with UNIMPLEMENTED and a message naming the RPC.
    """


class NotifierInternalServicer(notifier_service_pb2_grpc.NotifierInternalServiceServicer):
    """`tips.notifier.v1.NotifierInternalService`.

    Every RPC still comes from the generated base class, which the kernel
    answers with UNIMPLEMENTED and a message naming the RPC.
    """
