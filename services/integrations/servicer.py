"""gRPC servicers of the integrations service: thin adapters over its domain logic."""

from tips.integrations.v1 import integrations_service_pb2_grpc


class IntegrationsServicer(integrations_service_pb2_grpc.IntegrationsServiceServicer):
    """`tips.integrations.v1.IntegrationsService`.

    Every RPC still comes from the generated base class, which the kernel
    answers with UNIMPLEMENTED and a message naming the RPC.
    """


class IntegrationsInternalServicer(
    integrations_service_pb2_grpc.IntegrationsInternalServiceServicer
):
    """`tips.integrations.v1.IntegrationsInternalService`.

    Every RPC still comes from the generated base class, which the kernel
    answers with UNIMPLEMENTED and a message naming the RPC.
    """
