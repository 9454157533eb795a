"""A breaking proto change is a type error in the web app.

The app's types (protoc-gen-es) and REST routes (tools/protoc_gen_tips_rest.py)
come from proto/ in `make gen`. Here a copy of the repository's protos is
changed the way a careless edit would, its TypeScript regenerated with the
same buf plugins, and the app type-checked against it: the committed app must
compile as it is, and stop compiling at each change it depends on.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.contract, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # buf, python and node of the venv
TIP = Path("proto/tips/recommender/v1/tip.proto")
SERVICE = Path("proto/tips/recommender/v1/recommender_service.proto")


def run(cwd: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(
        list(cmd), cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=180
    )


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    """The protos, the TypeScript plugins of buf.gen.yaml, and the web app's sources."""
    copy = tmp_path / "repo"
    for name in ("proto", "third_party"):
        shutil.copytree(ROOT / name, copy / name)
    shutil.copy2(ROOT / "buf.yaml", copy / "buf.yaml")
    (copy / "tools").mkdir()
    shutil.copy2(ROOT / "tools/protoc_gen_tips_rest.py", copy / "tools/protoc_gen_tips_rest.py")
    template = yaml.safe_load((ROOT / "buf.gen.yaml").read_text())
    template["plugins"] = [p for p in template["plugins"] if p["out"] == "web/src/gen"]
    assert len(template["plugins"]) == 2, "protoc-gen-es and the REST routes"
    (copy / "buf.gen.yaml").write_text(yaml.safe_dump(template))
    web = copy / "web"
    shutil.copytree(ROOT / "web" / "src", web / "src", ignore=shutil.ignore_patterns("gen"))
    for name in ("tsconfig.json", "package.json", "build.mjs"):
        shutil.copy2(ROOT / "web" / name, web / name)
    (web / "node_modules").symlink_to(ROOT / "web" / "node_modules")
    yield copy


def regenerate_and_typecheck(repo: Path) -> subprocess.CompletedProcess[str]:
    generated = run(repo, "buf", "generate")
    assert generated.returncode == 0, generated.stderr
    return run(
        repo / "web", "node", "node_modules/typescript/bin/tsc", "--noEmit", "--pretty", "false"
    )


def edit(repo: Path, path: Path, old: str, new: str) -> None:
    text = (repo / path).read_text()
    assert old in text, f"{old!r} not in {path}"
    (repo / path).write_text(text.replace(old, new, 1))


def test_the_app_compiles_against_the_protos_as_they_are(repo: Path) -> None:
    checked = regenerate_and_typecheck(repo)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_renamed_field_is_a_type_error(repo: Path) -> None:
    edit(repo, TIP, "string explanation = 6", "string reason = 6")
    checked = regenerate_and_typecheck(repo)
    assert checked.returncode != 0
    assert "Property 'explanation' does not exist on type 'TipJson'" in checked.stdout
    assert "src/screens/TipNow.tsx" in checked.stdout


def test_a_changed_response_body_is_a_type_error(repo: Path) -> None:
    # ReactToTip answers the whole ReactToTipResponse instead of its `tip`.
    edit(repo, SERVICE, '      body: "*"\n      response_body: "tip"\n', '      body: "*"\n')
    checked = regenerate_and_typecheck(repo)
    assert checked.returncode != 0
    assert "ReactToTipResponseJson" in checked.stdout, checked.stdout
