"""gRPC servicers of the auth service: thin adapters over its domain logic."""

from tips.auth.v1 import auth_service_pb2_grpc


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    """`tips.auth.v1.AuthService`.

    Every RPC still comes from the generated base class, which the kernel
    answers with UNIMPLEMENTED and a message naming the RPC.
    """


class AuthInternalServicer(auth_service_pb2_grpc.AuthInternalServiceServicer):
    """`tips.auth.v1.AuthInternalService`.

    Every RPC still comes from the generated base class, which the kernel
    answers with UNIMPLEMENTED and a message naming the RPC.
    """
