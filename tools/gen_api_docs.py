"""Write docs/api/<service>.md from the protos: the API reference is generated, never typed.

Reads the `buf build` image (which keeps comments), and for each package
`tips.<service>.v1` lists its services with their RPCs, REST routes and access
rules, the events it publishes with subject and stream, and every message and
enum with the comments of their fields. `make gen` runs it; a contract test
fails when the committed pages differ from what it writes.

    python tools/gen_api_docs.py [--out docs/api]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2

from tips.options.v1 import options_pb2

ROOT = Path(__file__).resolve().parents[1]
FileProto = descriptor_pb2.FileDescriptorProto

# SourceCodeInfo path components (field numbers in descriptor.proto).
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, ENUM_VALUE, SERVICE_METHOD = 2, 2, 2
HTTP_VERBS = ("get", "put", "post", "delete", "patch")
SCALARS = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in descriptor_pb2.FieldDescriptorProto.Type.items()
}


def load_image() -> list[FileProto]:
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "image.binpb"
        buf = Path(sys.executable).parent / "buf"
        subprocess.run([str(buf), "build", "-o", str(image)], cwd=ROOT, check=True)
        return list(descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes()).file)


def comments(file: FileProto) -> dict[tuple[int, ...], str]:
    out = {}
    for location in file.source_code_info.location:
        text = " ".join(line.strip() for line in location.leading_comments.strip().splitlines())
        if text:
            out[tuple(location.path)] = text
    return out


def http_routes(method: descriptor_pb2.MethodDescriptorProto) -> list[str]:
    rule = method.options.Extensions[annotations_pb2.http]
    routes = []
    for binding in [rule, *rule.additional_bindings]:
        for verb in HTTP_VERBS:
            path = getattr(binding, verb)
            if path:
                routes.append(f"`{verb.upper()} {path}`")
        if binding.HasField("custom"):
            routes.append(f"`{binding.custom.kind} {binding.custom.path}`")
    return routes


def access(
    service: descriptor_pb2.ServiceDescriptorProto, method: descriptor_pb2.MethodDescriptorProto
) -> str:
    """Who may call: the user's token rule, and the mesh processes (kernel.access)."""
    policy = method.options.Extensions[options_pb2.access]
    callers = sorted(policy.callers)
    if service.name.endswith("InternalService"):
        return "callers: " + ", ".join(callers)
    if policy.public:
        user = "public"
    else:
        user = "token, scopes: " + ", ".join(policy.scopes) if policy.scopes else "token"
    return user + "; callers: " + ", ".join(["gateway", *callers])


def type_name(field: descriptor_pb2.FieldDescriptorProto) -> str:
    name = field.type_name.lstrip(".") if field.type_name else SCALARS[field.type]
    if field.label == field.LABEL_REPEATED:
        return f"repeated {name}"
    return name


def behaviors(field: descriptor_pb2.FieldDescriptorProto) -> str:
    values = field.options.Extensions[field_behavior_pb2.field_behavior]
    return ", ".join(field_behavior_pb2.FieldBehavior.Name(v) for v in values)


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_service(file: FileProto, docs: dict[tuple[int, ...], str]) -> list[str]:
    lines = []
    for s_index, service in enumerate(file.service):
        lines += [f"## {file.package}.{service.name}", "", docs.get((FILE_SERVICE, s_index), "")]
        lines += ["", "| RPC | REST | access | what it does |", "|---|---|---|---|"]
        for m_index, method in enumerate(service.method):
            stream = "stream " if method.server_streaming else ""
            signature = f"`{method.name}` → {stream}`{method.output_type.rsplit('.', 1)[-1]}`"
            routes = "<br>".join(http_routes(method)) or "gRPC only"
            what = docs.get((FILE_SERVICE, s_index, SERVICE_METHOD, m_index), "")
            lines.append(f"| {signature} | {routes} | {access(service, method)} | {cell(what)} |")
        lines.append("")
    return lines


def render_types(file: FileProto, docs: dict[tuple[int, ...], str]) -> list[str]:
    lines = []
    for index, message in enumerate(file.message_type):
        event = message.options.Extensions[options_pb2.event]
        lines += [f"### {message.name}", "", docs.get((FILE_MESSAGE, index), "")]
        if event.subject:
            lines += ["", f"Published on `{event.subject}` (stream `{event.stream}`)."]
        if message.field:
            lines += ["", "| field | type | behavior | meaning |", "|---|---|---|---|"]
            for f_index, field in enumerate(message.field):
                what = docs.get((FILE_MESSAGE, index, MESSAGE_FIELD, f_index), "")
                lines.append(
                    f"| `{field.name}` | `{type_name(field)}` | {behaviors(field)} | {cell(what)} |"
                )
        lines.append("")
    for index, enum in enumerate(file.enum_type):
        lines += [f"### enum {enum.name}", "", docs.get((FILE_ENUM, index), ""), ""]
        lines += ["| value | meaning |", "|---|---|"]
        for v_index, value in enumerate(enum.value):
            what = docs.get((FILE_ENUM, index, ENUM_VALUE, v_index), "")
            lines.append(f"| `{value.name}` | {cell(what)} |")
        lines.append("")
    return lines


def render(package: str, files: list[FileProto]) -> str:
    lines = [
        f"# `{package}`",
        "",
        "Generated from `proto/` by `tools/gen_api_docs.py` (`make gen`); do not edit.",
        "",
    ]
    for file in sorted(files, key=lambda f: f.name):
        lines += render_service(file, comments(file))
    lines += ["## Messages and enums", ""]
    for file in sorted(files, key=lambda f: f.name):
        lines += [f"From `{file.name}`.", ""]
        lines += render_types(file, comments(file))
    return "\n".join(line.rstrip() for line in lines).rstrip() + "\n"


def write_docs(out: Path) -> list[Path]:
    by_package: dict[str, list[FileProto]] = defaultdict(list)
    assert http_pb2 and annotations_pb2  # extensions registered before parsing
    for file in load_image():
        if file.package.startswith("tips.") and file.package != "tips.options.v1":
            by_package[file.package].append(file)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for package, files in sorted(by_package.items()):
        path = out / f"{package.split('.')[1]}.md"
        path.write_text(render(package, files))
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "api")
    args = parser.parse_args()
    for path in write_docs(args.out):
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
