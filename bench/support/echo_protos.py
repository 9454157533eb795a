"""Compiles bench/protos (the annotated EchoService) for a bench run."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = "benchecho/v1/echo.proto"


def compile_protos(out: Path) -> Path:
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    descriptor_set = out / "echo.binpb"
    args = [
        "protoc", f"-I{ROOT / 'bench' / 'protos'}", f"-I{ROOT / 'third_party'}", f"-I{well_known}",
        f"--python_out={out}", f"--grpc_python_out={out}",
        f"--descriptor_set_out={descriptor_set}", "--include_imports", "--include_source_info",
        PROTO,
    ]  # fmt: skip
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on bench/protos")
    return descriptor_set
