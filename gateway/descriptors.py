"""The contract as the edge reads it: the `buf build` image and its HTTP bindings.

`make gen` writes ``gen/python/tips/tips.binpb`` (a FileDescriptorSet with
comments) beside the generated stubs, so it ships wherever they do (the
wheel, the image); the drift check keeps it equal to ``proto/``. Everything the
gateway and the OpenAPI generator derive from descriptors starts here, once,
at start-up: no request walks descriptors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from tips.options.v1 import options_pb2

# Found from the stubs, not the source tree: <...>/tips/options/v1/options_pb2.py.
DEFAULT_IMAGE = Path(options_pb2.__file__).resolve().parents[2] / "tips.binpb"
_VERBS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class HttpBinding:
    """One (verb, path) of a method's `google.api.http` rule or its additional bindings."""

    method: MethodDescriptor
    verb: str  # upper case: GET, POST, ... or a custom verb's kind
    path: str  # the path template, e.g. /v1/{name=users/*/tips/*}:react
    body: str  # "", "*" or a top-level field name
    response_body: str  # "" or a top-level field name of the response
    # Position among the rule's bindings: 0 is the primary binding.
    index: int

    @property
    def service(self) -> ServiceDescriptor:
        return self.method.containing_service


def load_image(path: Path = DEFAULT_IMAGE) -> descriptor_pb2.FileDescriptorSet:
    """Read a FileDescriptorSet (a `buf build -o` image or `protoc --descriptor_set_out`)."""
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


def build_pool(image: descriptor_pb2.FileDescriptorSet) -> descriptor_pool.DescriptorPool:
    """A private pool with every file of the image (dependencies first).

    Well-known and googleapis files already compiled into this process are
    taken from the default pool's copies, so options such as `google.api.http`
    parse as the extensions this process knows.
    """
    assert annotations_pb2 and options_pb2  # register the extensions we read
    pool = descriptor_pool.DescriptorPool()
    by_name = {f.name: f for f in image.file}
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added:
            return
        proto = by_name.get(name)
        if proto is None:
            descriptor_pb2_file = descriptor_pb2.FileDescriptorProto()
            descriptor_pool.Default().FindFileByName(name).CopyToProto(descriptor_pb2_file)
            proto = descriptor_pb2_file
        for dependency in proto.dependency:
            add(dependency)
        pool.Add(proto)
        added.add(name)

    for file in image.file:
        add(file.name)
    return pool


def services(
    pool: descriptor_pool.DescriptorPool, image: descriptor_pb2.FileDescriptorSet
) -> Iterator[ServiceDescriptor]:
    """Every service of the image's files, in file order."""
    for file in image.file:
        for service in file.service:
            yield pool.FindServiceByName(f"{file.package}.{service.name}")


def http_bindings(method: MethodDescriptor) -> list[HttpBinding]:
    """The method's HTTP bindings: the rule first, then its additional bindings."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return []
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    out = []
    for index, binding in enumerate([rule, *rule.additional_bindings]):
        verb, path = _verb_and_path(binding)
        if path:
            out.append(HttpBinding(method, verb, path, binding.body, binding.response_body, index))
    return out


def access(method: MethodDescriptor) -> options_pb2.AccessOptions:
    """The method's `(tips.options.v1.access)`; the default needs a token, no scope."""
    options = method.GetOptions()
    if options.HasExtension(options_pb2.access):
        policy: options_pb2.AccessOptions = options.Extensions[options_pb2.access]
        return policy
    return options_pb2.AccessOptions()


def _verb_and_path(binding: http_pb2.HttpRule) -> tuple[str, str]:
    for verb in _VERBS:
        path = getattr(binding, verb)
        if path:
            return verb.upper(), path
    if binding.HasField("custom"):
        return binding.custom.kind.upper(), binding.custom.path
    return "", ""
