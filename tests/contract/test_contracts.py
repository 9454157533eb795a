"""The API conventions (docs/api-conventions.md), checked on the real descriptors.

buf lint covers naming; these tests cover what it cannot: comments everywhere (they
become the API docs), HTTP rules on public RPCs, event subjects, resource names, and
that the committed generated code imports. Each test lists every violation it finds.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.api import annotations_pb2, resource_pb2
from google.protobuf import descriptor_pb2

from tips.options.v1 import options_pb2

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).parent / "buf"
SERVICES = {
    "auth",
    "profile",
    "integrations",
    "events",
    "recommender",
    "ml_serving",  # no process since decision 37: a deprecated contract, kept for buf breaking
    "ml_pipelines",
    "notifier",
    "gateway",  # screens the edge composes itself, tips.gateway.v1
    "options",  # the shared custom options, tips.options.v1
}
PACKAGE = re.compile(r"^tips\.(?P<service>[a-z][a-z0-9_]*)\.v[1-9][0-9]*$")

# FileDescriptorProto / DescriptorProto / ... field numbers used in SourceCodeInfo paths.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE = 2
SERVICE_METHOD = 2


@dataclass(frozen=True)
class Element:
    file: descriptor_pb2.FileDescriptorProto
    kind: str  # service, rpc, message, field, enum, enum value
    name: str  # fully qualified
    path: tuple[int, ...]


class Files(list[descriptor_pb2.FileDescriptorProto]):
    """The tips/ files; a short repr keeps failure reports to the violations."""

    def __repr__(self) -> str:
        return f"<{len(self)} files under tips/>"


def build(root: Path, image: Path) -> Files:
    # buf build keeps source info (comments) in the image; protoc would drop it.
    result = subprocess.run(
        [str(BUF), "build", "-o", str(image)],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"buf build failed:\n{result.stderr}"
    # The option modules above are imported first, so their extensions parse here.
    assert annotations_pb2 and resource_pb2 and options_pb2
    files = descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes()).file
    tips = Files(f for f in files if f.name.startswith("tips/"))
    assert tips, "no proto files under proto/tips"
    return tips


@pytest.fixture(scope="session")
def tips_files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return build(ROOT, tmp_path_factory.mktemp("image") / "image.binpb")


def messages(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[descriptor_pb2.DescriptorProto, str, tuple[int, ...]]]:
    def walk(
        msgs: list[descriptor_pb2.DescriptorProto], prefix: str, path: tuple[int, ...]
    ) -> Iterator[tuple[descriptor_pb2.DescriptorProto, str, tuple[int, ...]]]:
        for i, msg in enumerate(msgs):
            if msg.options.map_entry:  # synthesized by protoc for map<,> fields
                continue
            name, here = f"{prefix}.{msg.name}", (*path, i)
            yield msg, name, here
            yield from walk(list(msg.nested_type), name, (*here, MESSAGE_NESTED))

    yield from walk(list(file.message_type), file.package, (FILE_MESSAGE,))


def enums(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[descriptor_pb2.EnumDescriptorProto, str, tuple[int, ...]]]:
    for i, enum in enumerate(file.enum_type):
        yield enum, f"{file.package}.{enum.name}", (FILE_ENUM, i)
    for msg, name, path in messages(file):
        for i, enum in enumerate(msg.enum_type):
            yield enum, f"{name}.{enum.name}", (*path, MESSAGE_ENUM, i)


def elements(file: descriptor_pb2.FileDescriptorProto) -> Iterator[Element]:
    for i, service in enumerate(file.service):
        name = f"{file.package}.{service.name}"
        yield Element(file, "service", name, (FILE_SERVICE, i))
        for j, method in enumerate(service.method):
            path = (FILE_SERVICE, i, SERVICE_METHOD, j)
            yield Element(file, "rpc", f"{name}.{method.name}", path)
    for msg, name, path in messages(file):
        yield Element(file, "message", name, path)
        for j, field in enumerate(msg.field):
            yield Element(file, "field", f"{name}.{field.name}", (*path, MESSAGE_FIELD, j))
    for enum, name, path in enums(file):
        yield Element(file, "enum", name, path)
        for j, value in enumerate(enum.value):
            yield Element(file, "enum value", f"{name}.{value.name}", (*path, ENUM_VALUE, j))


def report(violations: list[str]) -> str:
    return f"{len(violations)} contract violation(s):\n  " + "\n  ".join(violations)


def test_every_element_has_a_leading_comment(
    tips_files: Files,
) -> None:
    violations = []
    for file in tips_files:
        comments = {
            tuple(loc.path): loc.leading_comments.strip() for loc in file.source_code_info.location
        }
        violations += [
            f"{e.file.name}: {e.kind} {e.name} has no leading comment"
            for e in elements(file)
            if not comments.get(e.path)
        ]
    assert not violations, report(violations)


def test_public_rpcs_have_http_rules(tips_files: Files) -> None:
    violations = [
        f"{file.name}: rpc {file.package}.{service.name}.{method.name} has no google.api.http "
        "rule (service-to-service RPCs belong in a <Name>InternalService)"
        for file in tips_files
        for service in file.service
        if not service.name.endswith("InternalService")
        for method in service.method
        if not method.options.HasExtension(annotations_pb2.http)
    ]
    assert not violations, report(violations)


def test_internal_services_have_no_http_rules(
    tips_files: Files,
) -> None:
    violations = [
        f"{file.name}: rpc {file.package}.{service.name}.{method.name} is internal but has "
        "a google.api.http rule"
        for file in tips_files
        for service in file.service
        if service.name.endswith("InternalService")
        for method in service.method
        if method.options.HasExtension(annotations_pb2.http)
    ]
    assert not violations, report(violations)


def test_internal_rpcs_name_their_callers_and_only_known_processes(
    tips_files: Files,
) -> None:
    """Every internal RPC says who may call it (kernel.access enforces it); nobody
    else can, so an empty list would be an RPC no one may call."""
    from kernel.access import GATEWAY, OPERATOR
    from kernel.settings import SERVICE_NAMES

    known = {*SERVICE_NAMES, GATEWAY, OPERATOR}
    violations = []
    for file in tips_files:
        for service in file.service:
            for method in service.method:
                rpc = f"{file.package}.{service.name}.{method.name}"
                callers = list(method.options.Extensions[options_pb2.access].callers)
                if service.name.endswith("InternalService") and not callers:
                    violations.append(f"{file.name}: internal rpc {rpc} declares no callers")
                violations.extend(
                    f"{file.name}: rpc {rpc} names unknown caller {name!r}"
                    for name in callers
                    if name not in known
                )
    assert not violations, report(violations)


def test_a_service_no_process_serves_is_deprecated(tips_files: Files) -> None:
    """A package's services are served by the process of its name (the edge serves
    tips.gateway's screens). A contract no process serves any more stays, for
    buf breaking (decision 8), but must say it is deprecated, as ml_serving's does
    (decision 37): a caller reading the API must not take it for a live one."""
    from kernel.access import GATEWAY
    from kernel.settings import SERVICE_NAMES

    served = {*SERVICE_NAMES, GATEWAY}
    violations = [
        f"{file.name}: service {file.package}.{service.name} is served by no process "
        "and not marked deprecated"
        for file in tips_files
        if (match := PACKAGE.match(file.package)) is None or match["service"] not in served
        for service in file.service
        if not service.options.deprecated
    ]
    assert not violations, report(violations)


def test_event_messages_declare_subject_and_stream(
    tips_files: Files,
) -> None:
    violations = []
    for file in tips_files:
        if Path(file.name).name != "events.proto":
            continue
        for msg in file.message_type:
            where = f"{file.name}: message {file.package}.{msg.name}"
            if not msg.options.HasExtension(options_pb2.event):
                violations.append(f"{where} has no (tips.options.v1.event) option")
                continue
            event = msg.options.Extensions[options_pb2.event]
            if not event.subject.startswith(file.package + "."):
                violations.append(
                    f"{where}: subject {event.subject!r} does not start with {file.package!r}."
                )
            # Each service owns one stream, named after it (docs/api-conventions.md).
            stream = "TIPS_" + file.package.split(".")[1].upper()
            if event.stream != stream:
                violations.append(f"{where}: stream {event.stream!r} is not {stream!r}")
    assert not violations, report(violations)


def test_packages_are_tips_service_version(
    tips_files: Files,
) -> None:
    violations = []
    for file in tips_files:
        match = PACKAGE.match(file.package)
        if match is None or match["service"] not in SERVICES:
            violations.append(
                f"{file.name}: package {file.package!r} is not tips.<service>.v<N> with "
                f"<service> one of {sorted(SERVICES)}"
            )
        elif Path(file.name).parent != Path(*file.package.split(".")):
            violations.append(f"{file.name}: package {file.package!r} is not its directory")
    assert not violations, report(violations)


def test_enum_zero_values_are_unspecified(
    tips_files: Files,
) -> None:
    violations = [
        f"{file.name}: enum {name} has zero value "
        f"{next((v.name for v in enum.value if v.number == 0), '<none>')}, "
        "which does not end with _UNSPECIFIED"
        for file in tips_files
        for enum, name, _ in enums(file)
        if not any(v.number == 0 and v.name.endswith("_UNSPECIFIED") for v in enum.value)
    ]
    assert not violations, report(violations)


def test_resources_have_name_as_field_1(
    tips_files: Files,
) -> None:
    violations = []
    for file in tips_files:
        for msg, name, _ in messages(file):
            if not msg.options.HasExtension(resource_pb2.resource):
                continue
            first = next((f for f in msg.field if f.number == 1), None)
            if first is None or first.name != "name" or first.type != first.TYPE_STRING:
                got = "nothing" if first is None else f"{first.name!r}"
                violations.append(
                    f"{file.name}: resource {name} must have `string name = 1`, field 1 is {got}"
                )
    assert not violations, report(violations)


def test_generated_modules_import(tips_files: Files) -> None:
    violations = []
    for file in tips_files:
        base = file.name.removesuffix(".proto").replace("/", ".")
        for module in (f"{base}_pb2", f"{base}_pb2_grpc"):
            try:
                importlib.import_module(module)
            except Exception as error:  # any failure is a finding; keep collecting
                violations.append(f"{file.name}: import {module} failed: {error!r}")
    assert not violations, report(violations) + "\n(run `make gen`)"


BAD_PROTO = """\
syntax = "proto3";

package tips.bogus.v1;

import "google/api/annotations.proto";
import "google/api/resource.proto";

service BogusService {
  rpc GetThing(GetThingRequest) returns (GetThingResponse);
}

service BogusInternalService {
  rpc Sync(SyncRequest) returns (SyncResponse) {
    option (google.api.http) = {post: "/v1/sync"};
  }
}

message SyncRequest {}

message SyncResponse {}

message GetThingRequest {
  string name = 1;
}

message GetThingResponse {
  Thing thing = 1;
}

message Thing {
  option (google.api.resource) = {
    type: "tips.app/Thing"
    pattern: "things/{thing}"
  };
  string id = 1;
  Kind kind = 2;
}

enum Kind {
  KIND_NONE = 0;
}
"""


def test_the_checks_catch_violations(tmp_path: Path) -> None:
    """A proto breaking every convention fails every check above (none passes vacuously)."""
    shutil.copytree(ROOT / "third_party", tmp_path / "third_party")
    shutil.copy2(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    options = Path("proto/tips/options/v1/options.proto")
    (tmp_path / options).parent.mkdir(parents=True)
    shutil.copy2(ROOT / options, tmp_path / options)
    bad = tmp_path / "proto/tips/bogus/v1/events.proto"
    bad.parent.mkdir(parents=True)
    bad.write_text(BAD_PROTO)
    files = build(tmp_path, tmp_path / "image.binpb")
    checks = {
        test_every_element_has_a_leading_comment: "field tips.bogus.v1.Thing.id has no",
        test_public_rpcs_have_http_rules: "BogusService.GetThing has no google.api.http",
        test_internal_services_have_no_http_rules: "BogusInternalService.Sync is internal",
        test_event_messages_declare_subject_and_stream: "Thing has no (tips.options.v1.event)",
        test_packages_are_tips_service_version: "package 'tips.bogus.v1' is not",
        test_a_service_no_process_serves_is_deprecated: "BogusService is served by no process",
        test_enum_zero_values_are_unspecified: "zero value KIND_NONE",
        test_resources_have_name_as_field_1: "field 1 is 'id'",
        test_generated_modules_import: "import tips.bogus.v1.events_pb2 failed",
    }
    for check, expected in checks.items():
        with pytest.raises(AssertionError, match=re.escape(expected)):
            check(files)
