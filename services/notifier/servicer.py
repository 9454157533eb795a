"""gRPC servicers of the notifier service: thin adapters over its domain logic."""

from __future__ import annotations

from typing import Any

from kernel import paging
from kernel.identity import require_owner
from services.notifier import domain
from services.notifier.core.devices import Devices
from services.notifier.core.notifications import Log
from services.notifier.core.sending import Sender
from tips.notifier.v1 import notifier_service_pb2 as pb
from tips.notifier.v1 import notifier_service_pb2_grpc as pb_grpc

PAGE_DEFAULT = 50
PAGE_MAX = 100


class NotifierServicer(pb_grpc.NotifierServiceServicer):
    """`tips.notifier.v1.NotifierService`: the caller's devices and delivery log."""

    def __init__(self, devices: Devices, log: Log) -> None:
        self.devices = devices
        self.log = log

    async def CreateDevice(
        self, request: pb.CreateDeviceRequest, context: Any
    ) -> pb.CreateDeviceResponse:
        caller = require_owner(request.parent, "parent")
        device = await self.devices.create(caller.user, request)
        return pb.CreateDeviceResponse(device=device)

    async def ListDevices(
        self, request: pb.ListDevicesRequest, context: Any
    ) -> pb.ListDevicesResponse:
        caller = require_owner(request.parent, "parent")
        size = paging.page_size(request.page_size, default=PAGE_DEFAULT, maximum=PAGE_MAX)
        found, token = await self.devices.list(caller.user, size, request.page_token)
        return pb.ListDevicesResponse(devices=found, next_page_token=token)

    async def DeleteDevice(
        self, request: pb.DeleteDeviceRequest, context: Any
    ) -> pb.DeleteDeviceResponse:
        user_id, device_id = domain.DEVICE.parse(request.name)
        require_owner(request.name)
        await self.devices.delete(user_id, device_id)
        return pb.DeleteDeviceResponse()

    async def ListNotifications(
        self, request: pb.ListNotificationsRequest, context: Any
    ) -> pb.ListNotificationsResponse:
        caller = require_owner(request.parent, "parent")
        size = paging.page_size(request.page_size, default=PAGE_DEFAULT, maximum=PAGE_MAX)
        found, token = await self.log.list(caller.user, request, size)
        return pb.ListNotificationsResponse(notifications=found, next_page_token=token)

    async def GetNotification(
        self, request: pb.GetNotificationRequest, context: Any
    ) -> pb.GetNotificationResponse:
        user_id, notification_id = domain.NOTIFICATION.parse(request.name)
        require_owner(request.name)
        return pb.GetNotificationResponse(notification=await self.log.get(user_id, notification_id))


class NotifierInternalServicer(pb_grpc.NotifierInternalServiceServicer):
    """`tips.notifier.v1.NotifierInternalService`: delivery requests from mesh peers."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender

    async def SendNotification(
        self, request: pb.SendNotificationRequest, context: Any
    ) -> pb.SendNotificationResponse:
        return await self.sender.send(request)
