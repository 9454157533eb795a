"""A protoc plugin that runs grpcio-tools' gRPC Python generator.

grpcio-tools ships the generator inside its protoc, not as a
``protoc-gen-grpc_python`` binary, so buf cannot call it directly. This plugin
reads the CodeGeneratorRequest, hands its files to ``grpc_tools.protoc`` as a
descriptor set, and returns what that wrote as a CodeGeneratorResponse.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    response = plugin_pb2.CodeGeneratorResponse()
    response.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    with tempfile.TemporaryDirectory() as tmp:
        descriptor_set = descriptor_pb2.FileDescriptorSet(file=request.proto_file)
        set_path = Path(tmp) / "input.binpb"
        set_path.write_bytes(descriptor_set.SerializeToString())
        out_dir = Path(tmp) / "out"
        out_dir.mkdir()
        args = [
            "grpc_tools.protoc",
            f"--descriptor_set_in={set_path}",
            f"--grpc_python_out={out_dir}",
            *request.file_to_generate,
        ]
        if protoc.main(args) != 0:
            response.error = "grpc_tools.protoc failed on " + ", ".join(request.file_to_generate)
            return response
        for path in sorted(out_dir.rglob("*.py")):
            generated = response.file.add()
            generated.name = str(path.relative_to(out_dir))
            generated.content = path.read_text()
    return response


def main() -> None:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(generate(request).SerializeToString())


if __name__ == "__main__":
    main()
