"""Write docs/api/openapi.json: the REST edge's OpenAPI 3.1, from the descriptor image.

The same ``gateway.openapi.build_openapi`` the gateway serves at ``/openapi.json``;
committing its output makes REST surface changes visible in review.

    python tools/gen_openapi.py [--image gen/python/tips/tips.binpb] [--out docs/api/openapi.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "gen" / "python"))

from gateway import descriptors, openapi  # noqa: E402

TITLE = "Tips mesh API"
VERSION = "v1"


def render(image_path: Path, *, title: str = TITLE, version: str = VERSION) -> str:
    image = descriptors.load_image(image_path)
    spec = openapi.build_openapi(image, descriptors.build_pool(image), title=title, version=version)
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=descriptors.DEFAULT_IMAGE)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "api" / "openapi.json")
    parser.add_argument("--check", action="store_true", help="fail if --out differs")
    args = parser.parse_args()
    text = render(args.image)
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            sys.exit(f"{args.out} is stale: run python tools/gen_openapi.py")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
