"""Fail when the committed gen/ is not what buf makes from proto/.

gen/python and web/src/gen (the web app's TypeScript, protoc-gen-es) come from
``buf generate``; gen/python/tips/tips.binpb is the ``buf build`` image (with comments)
that the gateway and the OpenAPI generator read at start-up. All are made into a
temporary directory, so the working tree is never touched, then compared file by file:
missing, extra and differing files.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The `out` of every plugin in buf.gen.yaml lies under one of these.
GENERATED = (Path("gen"), Path("web/src/gen"))
IMAGE = Path("gen/python/tips/tips.binpb")
# Not produced by buf, but allowed to live next to generated code.
IGNORED_NAMES = {"__pycache__", "py.typed"}
MAX_DIFF_LINES = 40  # per file: enough to see what drifted, not a wall of text


def tree(root: Path) -> dict[str, bytes]:
    if not root.is_dir():
        return {}
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and path.suffix != ".pyc"
        and not IGNORED_NAMES.intersection(path.relative_to(root).parts)
    }


def generate(out: Path) -> None:
    # The plugins run `python ...`: put this interpreter's bin dir first so they use the
    # venv's python, grpc_tools and protoc-gen-mypy (and node, for protoc-gen-es), as
    # `make gen` does.
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    result = subprocess.run(
        ["buf", "generate", "-o", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"gen drift: `buf generate` failed (exit {result.returncode})")
    image = out / IMAGE
    image.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["buf", "build", "-o", str(image)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"gen drift: `buf build` failed (exit {result.returncode})")


def unified(name: str, committed: bytes, fresh: bytes) -> list[str]:
    if name.endswith(".binpb"):
        return [f"binary descriptor set differs ({len(committed)} vs {len(fresh)} bytes)"]
    lines = list(
        difflib.unified_diff(
            committed.decode(errors="replace").splitlines(),
            fresh.decode(errors="replace").splitlines(),
            fromfile=f"committed/{name}",
            tofile=f"generated/{name}",
            lineterm="",
        )
    )
    if len(lines) > MAX_DIFF_LINES:
        lines = [*lines[:MAX_DIFF_LINES], f"... {len(lines) - MAX_DIFF_LINES} more diff lines"]
    return lines


def trees(root: Path) -> dict[str, bytes]:
    """Every generated file under ``root``, keyed by its path from the repo root."""
    return {
        str(base / name): data for base in GENERATED for name, data in tree(root / base).items()
    }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tips-gen-") as tmp:
        generate(Path(tmp))
        fresh = trees(Path(tmp))
    committed = trees(ROOT)
    where = " and ".join(map(str, GENERATED))

    missing = sorted(fresh.keys() - committed.keys())
    extra = sorted(committed.keys() - fresh.keys())
    differing = sorted(k for k in fresh.keys() & committed.keys() if fresh[k] != committed[k])
    if not (missing or extra or differing):
        print(f"gen drift: {where} match buf generate ({len(fresh)} files).")
        return 0

    for name in missing:
        print(f"missing: {name}")
    for name in extra:
        print(f"extra (no proto generates it): {name}")
    for name in differing:
        print(f"differs: {name}")
        print("\n".join(unified(name, committed[name], fresh[name])))
    print(
        f"gen drift: FAILED: {len(missing)} missing, {len(extra)} extra, "
        f"{len(differing)} differing files in {where}. Run `make gen` and commit them.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
