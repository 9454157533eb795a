"""gRPC servicers of the profile service: thin adapters over its domain logic."""

from tips.profile.v1 import profile_service_pb2_grpc


class ProfileServicer(profile_service_pb2_grpc.ProfileServiceServicer):
    """`tips.profile.v1.ProfileService`.

    Every RPC still comes from the generated base class, which the kernel
    answers with UNIMPLEMENTED and a message naming the RPC.
    """


class ProfileInternalServicer(profile_service_pb2_grpc.ProfileInternalServiceServicer):
    """`tips.profile.v1.ProfileInternalService`.

    Every RPC still comes from the generated base class, which the kernel
    answers with UNIMPLEMENTED and a message naming the RPC.
    """
