"""The conformance rig: the test proto compiled at test time, a real grpc.aio
backend for it, and the gateway serving it over real HTTP (uvicorn, free port).

One backend and one gateway per module. The gateway gets a tiny EdgeAuth
(a test double of our own interface, not of a library): ``Bearer good``
is user ``u1`` with scope ``read``, ``Bearer admin`` adds ``admin``.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
import uvicorn
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2, message_factory
from grpc_tools import protoc

from gateway.app import create_app
from gateway.descriptors import build_pool
from gateway.upstreams import Upstreams
from kernel.errors import InvalidArgument, NotFound, Unauthenticated
from kernel.h2server import Server
from kernel.identity import Caller
from kernel.server import MAX_METADATA_BYTES
from kernel.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
PROTOS = Path(__file__).resolve().parent / "protos"
SERVICE = "conformance.v1.ConformanceService"


def compile_descriptor_set(out_dir: Path) -> Path:
    """protoc the test proto into a FileDescriptorSet with imports and comments."""
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out = out_dir / "conformance.binpb"
    code = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'third_party'}",
            f"-I{ROOT / 'proto'}",
            f"-I{PROTOS}",
            f"-I{well_known}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            "--include_source_info",
            "conformance/v1/conformance.proto",
        ]
    )
    assert code == 0, "protoc failed on the conformance proto"
    return out


def violations(body: dict[str, Any]) -> dict[str, str]:
    """A google.rpc.Status body's BadRequest field violations: field -> description."""
    found: dict[str, str] = {}
    for detail in body["details"]:
        if detail["@type"].endswith("google.rpc.BadRequest"):
            for v in detail["fieldViolations"]:
                found[v["field"]] = v["description"]
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FakeEdgeAuth:
    """Our EdgeAuth interface with fixed tokens."""

    async def authenticate(self, authorization: str | None) -> Caller:
        if not authorization:
            raise Unauthenticated("an access token is required", reason="TOKEN_MISSING")
        if authorization == "Bearer good":
            return Caller("u1", frozenset({"read"}), "s1", token="good")
        if authorization == "Bearer admin":
            return Caller("u1", frozenset({"read", "admin"}), "s1", token="admin")
        raise Unauthenticated("the access token is not valid", reason="TOKEN_INVALID")

    async def close(self) -> None:
        return None


class Backend:
    """The conformance service, implemented with generic handlers over our pool."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self.pool = pool
        self.seen_deadline: float | None = None
        # Block / BlockStream: when each tagged call started and was cancelled.
        self.started: dict[str, float] = {}
        self.cancelled: dict[str, float] = {}

    def any_cls(self, full_name: str) -> Any:
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))

    def cls(self, name: str) -> Any:
        return message_factory.GetMessageClass(
            self.pool.FindMessageTypeByName(f"conformance.v1.{name}")
        )

    def handler(self) -> grpc.GenericRpcHandler:
        c = self.cls

        def unary(fn: Any, req: Any, resp: Any) -> grpc.RpcMethodHandler:
            out = c(resp) if isinstance(resp, str) else resp
            into = c(req) if isinstance(req, str) else req
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=into.FromString,
                response_serializer=out.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Echo": unary(self.echo, "Everything", "Everything"),
                "NestedBody": unary(self.echo, "Everything", "Everything"),
                "Download": unary(
                    self.download, "GetBookRequest", self.any_cls("google.api.HttpBody")
                ),
                "Upload": unary(self.upload, self.any_cls("google.api.HttpBody"), "Book"),
                "DownloadStream": grpc.unary_stream_rpc_method_handler(
                    self.download_stream,
                    request_deserializer=c("StreamRequest").FromString,
                    response_serializer=self.any_cls("google.api.HttpBody").SerializeToString,
                ),
                "DoubleColon": unary(self.double_colon, "Book", "Book"),
                "GetBook": unary(self.get_book, "GetBookRequest", "GetBookResponse"),
                "GetSpecialBook": unary(self.get_special, "GetBookRequest", "Book"),
                "UpdateBook": unary(self.update_book, "UpdateBookRequest", "UpdateBookResponse"),
                "DeleteBook": unary(self.delete_book, "GetBookRequest", empty_pb2.Empty),
                "ArchiveBook": unary(self.archive, "ArchiveBookRequest", "Book"),
                "Search": unary(self.search, "SearchRequest", "Book"),
                "Fail": unary(self.fail, "FailRequest", empty_pb2.Empty),
                "WhoAmI": unary(self.whoami, "WhoAmIRequest", "WhoAmIResponse"),
                "AdminOnly": unary(self.whoami, "WhoAmIRequest", "WhoAmIResponse"),
                "Block": unary(self.block, "BlockRequest", "Book"),
                "BlockStream": grpc.unary_stream_rpc_method_handler(
                    self.block_stream,
                    request_deserializer=c("BlockRequest").FromString,
                    response_serializer=c("Book").SerializeToString,
                ),
                "Collect": grpc.stream_unary_rpc_method_handler(
                    self.collect,
                    request_deserializer=c("Book").FromString,
                    response_serializer=c("CollectResponse").SerializeToString,
                ),
                "Chat": grpc.stream_stream_rpc_method_handler(
                    self.chat,
                    request_deserializer=c("Book").FromString,
                    response_serializer=c("Book").SerializeToString,
                ),
                "Stream": grpc.unary_stream_rpc_method_handler(
                    self.stream,
                    request_deserializer=c("StreamRequest").FromString,
                    response_serializer=c("Book").SerializeToString,
                ),
            },
        )

    async def echo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return request

    async def download(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        data = f"name,pages\n{request.name},412\n".encode()
        return self.any_cls("google.api.HttpBody")(content_type="text/csv", data=data)

    async def upload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.cls("Book")(name=request.content_type, pages=len(request.data))

    async def download_stream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        for index in range(min(request.count, 100)):  # fuzzers ask for billions
            if request.fail_after and index == request.fail_after:
                await context.abort(grpc.StatusCode.INTERNAL, "stream broke")
            chunk = f"line {index}\n".encode()
            yield self.any_cls("google.api.HttpBody")(content_type="text/plain", data=chunk)

    async def double_colon(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.cls("Book")(name=f"double:{request.name}", title=request.title)

    async def get_book(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        book = self.cls("Book")(name=request.name, title="Dune", pages=412)
        return self.cls("GetBookResponse")(book=book, etag="e1")

    async def get_special(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.cls("Book")(name=f"special:{request.name}")

    async def update_book(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.cls("UpdateBookResponse")(
            book=request.book, mask_paths=list(request.update_mask.paths)
        )

    async def delete_book(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return empty_pb2.Empty()

    async def archive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.cls("Book")(name=request.name, title=f"archived: {request.reason}")

    async def search(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.cls("Book")(title=f"found {request.query}")

    async def fail(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        code = next(c for c in grpc.StatusCode if c.value[0] == request.code)
        await context.send_initial_metadata((("x-why", "asked-to-fail"),))
        if code == grpc.StatusCode.OK:
            return empty_pb2.Empty()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            await context.abort_with_status(
                InvalidArgument([("code", "the backend says no")]).to_grpc_status()
            )
        if code == grpc.StatusCode.NOT_FOUND:
            await context.abort_with_status(
                NotFound("shelves/1/books/2", resource_type="Book").to_grpc_status()
            )
        if code == grpc.StatusCode.UNAUTHENTICATED:
            await context.abort_with_status(
                Unauthenticated("token expired", reason="TOKEN_EXPIRED").to_grpc_status()
            )
        await context.abort(code, f"failed with {code.name}")

    async def whoami(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata: dict[str, str] = {}
        for key, value in context.invocation_metadata() or ():
            text = base64.b64encode(value).decode() if isinstance(value, bytes) else value
            metadata[key] = text
        context.set_trailing_metadata((("x-trailer", "t"),))
        await context.send_initial_metadata((("x-answer", "42"), ("x-raw-bin", b"\x00\x01")))
        remaining = context.time_remaining() or 0.0
        return self.cls("WhoAmIResponse")(
            name=request.name, metadata=metadata, deadline_seconds=remaining
        )

    async def block(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.started[request.tag] = time.monotonic()
        try:
            await asyncio.sleep(request.seconds)
        except asyncio.CancelledError:
            self.cancelled[request.tag] = time.monotonic()
            raise
        return self.cls("Book")(name=request.tag)

    async def block_stream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        self.started[request.tag] = time.monotonic()
        try:
            for index in range(1000):
                yield self.cls("Book")(name=request.tag, pages=index)
                await asyncio.sleep(request.seconds)
        except asyncio.CancelledError:
            self.cancelled[request.tag] = time.monotonic()
            raise

    async def collect(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        names, pages = [], 0
        async for book in requests:
            if book.name == "refuse":
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "refused mid-stream")
            names.append(book.name)
            pages += book.pages
        return self.cls("CollectResponse")(names=names, total_pages=pages)

    async def chat(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for book in requests:
            yield self.cls("Book")(name=f"re: {book.name}", pages=book.pages * 2)

    async def stream(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if request.fail_first:
            await context.abort(grpc.StatusCode.NOT_FOUND, "nothing to stream")
        for index in range(min(request.count, 100)):  # fuzzers ask for billions
            if request.fail_after and index == request.fail_after:
                await context.abort(grpc.StatusCode.INTERNAL, "stream broke")
            yield self.cls("Book")(name=f"shelves/1/books/{index}", pages=index)


@dataclass
class Rig:
    client: httpx.AsyncClient
    base_url: str
    descriptor_set: Path
    backend_addr: str
    backend: Backend


@pytest_asyncio.fixture(scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    path = compile_descriptor_set(tmp_path_factory.mktemp("conformance"))
    image = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    backend = Backend(build_pool(image))
    server = Server(max_metadata_bytes=MAX_METADATA_BYTES)  # as every service of ours
    server.add_generic_rpc_handlers((backend.handler(),))
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    backend_addr = f"127.0.0.1:{grpc_port}"

    upstreams = Upstreams({}, services={SERVICE: backend_addr})
    app = create_app(Settings(), upstreams, image=image, auth=FakeEdgeAuth())
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", proxy_headers=False
    )
    http = uvicorn.Server(config)
    http.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(http.serve())
    for _ in range(1000):  # uvicorn has no started event; poll briefly
        if http.started:
            break
        await asyncio.sleep(0.01)
    base_url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield Rig(client, base_url, path, backend_addr, backend)
    http.should_exit = True
    await task
    await server.stop(0)
