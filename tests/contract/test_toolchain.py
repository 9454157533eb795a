"""Each contract check fails on the mistake it guards against, and passes a clean tree.

Every test works on a throwaway git repository holding the real toolchain (buf.yaml,
buf.gen.yaml, third_party/, tools/, the options proto) and one small fixture package,
so the results do not depend on protos other engineers are editing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin: buf, python, protoc-gen-mypy
TOOLS = (
    "buf_breaking.py",
    "check_gen_drift.py",
    "protoc_gen_grpc_python.py",
    "protoc_gen_tips_rest.py",
)
SAMPLE = Path("proto/tips/sample/v1/sample.proto")
GEN_SAMPLE = Path("gen/python/tips/sample/v1/sample_pb2.py")

# The exact commands of the Makefile's lint-* targets (checked by test_makefile_*).
LINT = ["buf", "lint"]
FORMAT = ["buf", "format", "proto", "--diff", "--exit-code"]
BREAKING = ["python", "tools/buf_breaking.py"]
DRIFT = ["python", "tools/check_gen_drift.py"]

SAMPLE_V1 = """\
syntax = "proto3";

// A fixture package for the toolchain tests.
package tips.sample.v1;

// A note kept by the sample service.
message Note {
  // The note's title.
  string title = 1;
  // The note's body.
  string body = 2;
  // Who can see the note.
  Visibility visibility = 3;
}

// Who can see a note.
enum Visibility {
  // Not set.
  VISIBILITY_UNSPECIFIED = 0;
  // Only the author.
  VISIBILITY_PRIVATE = 1;
}
"""
# The second commit adds a field: a compatible change that HEAD~1 is compared with.
READ_COUNT = "  Visibility visibility = 3;\n  // How often it was read.\n  int32 read_count = 4;\n"
SAMPLE_V2 = SAMPLE_V1.replace("  Visibility visibility = 3;\n", READ_COUNT)


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # Reproducible commits, untouched by the user's git config.
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "contract test",
        "GIT_AUTHOR_EMAIL": "contract@test.invalid",
        "GIT_COMMITTER_NAME": "contract test",
        "GIT_COMMITTER_EMAIL": "contract@test.invalid",
        "TIPS_BREAKING_AGAINST": "",
    }


def run(cwd: Path, *cmd: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd),
        cwd=cwd,
        env={**env(), **extra_env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def ok(cwd: Path, *cmd: str) -> str:
    result = run(cwd, *cmd)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def commit(repo: Path, message: str) -> None:
    ok(repo, "git", "add", "-A")
    ok(repo, "git", "commit", "--quiet", "-m", message)


def edit(repo: Path, path: Path, old: str, new: str) -> None:
    target = repo / path
    text = target.read_text()
    assert old in text, f"{old!r} not in {path}"
    target.write_text(text.replace(old, new, 1))


def regenerate(repo: Path) -> None:
    """What `make gen` does: the Python and TypeScript stubs and the descriptor image."""
    ok(repo, "buf", "generate")
    ok(repo, "buf", "build", "-o", "gen/python/tips/tips.binpb")


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-commit repository: the sample package, then a compatible field added."""
    repo = tmp_path_factory.mktemp("template") / "repo"
    repo.mkdir()
    for name in ("buf.yaml", "buf.gen.yaml"):
        shutil.copy2(ROOT / name, repo / name)
    shutil.copytree(ROOT / "third_party", repo / "third_party")
    (repo / "tools").mkdir()
    for name in TOOLS:
        shutil.copy2(ROOT / "tools" / name, repo / "tools" / name)
    options = Path("proto/tips/options/v1/options.proto")
    (repo / options).parent.mkdir(parents=True)
    shutil.copy2(ROOT / options, repo / options)
    (repo / SAMPLE).parent.mkdir(parents=True)
    (repo / SAMPLE).write_text(SAMPLE_V1)
    # buf.gen.yaml's protoc-gen-es runs from the web app's packages.
    (repo / "web").mkdir()
    (repo / "web" / "node_modules").symlink_to(ROOT / "web" / "node_modules")
    (repo / ".gitignore").write_text("__pycache__/\nnode_modules\n")
    ok(repo, "git", "init", "--quiet", "--initial-branch=main")
    regenerate(repo)
    commit(repo, "sample v1")
    (repo / SAMPLE).write_text(SAMPLE_V2)
    regenerate(repo)
    commit(repo, "sample: add read_count")
    return repo


@pytest.fixture
def repo(template: Path, tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / "repo"
    shutil.copytree(template, copy, symlinks=True)
    yield copy


def test_makefile_runs_the_commands_tested_here() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for cmd in (LINT, FORMAT):
        assert "$(BIN)/" + " ".join(cmd) in makefile
    for cmd in (BREAKING, DRIFT):
        assert "$(BIN)/" + " ".join(cmd) in makefile


def test_clean_repository_passes_every_check(repo: Path) -> None:
    ok(repo, *LINT)
    ok(repo, *FORMAT)
    out = ok(repo, *BREAKING)
    assert "HEAD~1" in out and "no breaking changes" in out
    assert "match buf generate" in ok(repo, *DRIFT)


@pytest.mark.parametrize(
    ("old", "new", "rule"),
    [
        ("string body = 2;", "string noteBody = 2;", "lower_snake_case"),
        ("VISIBILITY_UNSPECIFIED = 0;", "VISIBILITY_NONE = 0;", "_UNSPECIFIED"),
    ],
    ids=["camel-case-field", "enum-zero-not-unspecified"],
)
def test_lint_error_fails_buf_lint(repo: Path, old: str, new: str, rule: str) -> None:
    edit(repo, SAMPLE, old, new)
    result = run(repo, *LINT)
    assert result.returncode != 0
    assert rule in result.stdout and str(SAMPLE) in result.stdout


def test_unformatted_proto_fails_format_check(repo: Path) -> None:
    edit(repo, SAMPLE, "  string title = 1;", "      string   title =1;")
    result = run(repo, *FORMAT)
    assert result.returncode != 0
    assert "string title = 1;" in result.stdout  # the diff shows the formatted line


BREAKING_EDITS = pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  // The note's body.\n  string body = 2;\n", "", 'field "2" with name "body"'),
        ("message Note {", "message Memo {", 'message "Note" was deleted'),
    ],
    ids=["removed-field", "renamed-message"],
)


@BREAKING_EDITS
def test_committed_breaking_change_fails(repo: Path, old: str, new: str, message: str) -> None:
    edit(repo, SAMPLE, old, new)
    regenerate(repo)
    commit(repo, "break the sample")
    result = run(repo, *BREAKING)
    assert result.returncode != 0
    assert "HEAD~1" in result.stdout
    assert message in result.stdout
    assert "FAILED" in result.stderr


@BREAKING_EDITS
def test_uncommitted_breaking_change_fails(repo: Path, old: str, new: str, message: str) -> None:
    edit(repo, SAMPLE, old, new)
    result = run(repo, *BREAKING)
    assert result.returncode != 0
    assert "uncommitted" in result.stdout
    assert message in result.stdout


def test_uncommitted_change_is_compared_with_head_not_head_1(repo: Path) -> None:
    # read_count came in HEAD; removing it in the working tree breaks HEAD.
    edit(repo, SAMPLE, "  // How often it was read.\n  int32 read_count = 4;\n", "")
    result = run(repo, *BREAKING)
    assert result.returncode != 0
    assert 'name "read_count"' in result.stdout


def test_override_base_with_env(repo: Path) -> None:
    edit(repo, SAMPLE, "  // The note's body.\n  string body = 2;\n", "")
    commit(repo, "break the sample")
    # Against HEAD itself the committed break is invisible: the override is honoured.
    result = run(repo, *BREAKING, TIPS_BREAKING_AGAINST="HEAD")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TIPS_BREAKING_AGAINST=HEAD" in result.stdout
    missing = run(repo, *BREAKING, TIPS_BREAKING_AGAINST="no-such-ref")
    assert missing.returncode != 0
    assert "does not name a commit" in missing.stderr


def test_shallow_clone_without_origin_fails_loudly(repo: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    ok(tmp_path, "git", "clone", "--quiet", "--depth", "1", f"file://{repo}", str(clone))
    shutil.rmtree(repo)  # origin gone: the previous commit cannot be fetched
    result = run(clone, *BREAKING)
    assert result.returncode != 0
    assert "shallow clone without the previous commit" in result.stderr
    assert "no breaking changes" not in result.stdout


def test_shallow_clone_with_origin_deepens_and_compares(repo: Path, tmp_path: Path) -> None:
    edit(repo, SAMPLE, "  // The note's body.\n  string body = 2;\n", "")
    commit(repo, "break the sample")
    clone = tmp_path / "clone"
    ok(tmp_path, "git", "clone", "--quiet", "--depth", "1", f"file://{repo}", str(clone))
    result = run(clone, *BREAKING)
    assert result.returncode != 0
    assert 'field "2" with name "body"' in result.stdout


def test_root_commit_passes_and_says_so(tmp_path: Path, template: Path) -> None:
    repo = tmp_path / "root"
    shutil.copytree(template, repo, ignore=shutil.ignore_patterns(".git"))
    ok(repo, "git", "init", "--quiet", "--initial-branch=main")
    commit(repo, "only commit")
    result = run(repo, *BREAKING)
    assert result.returncode == 0, result.stderr
    assert "root commit" in result.stdout


def test_base_without_contract_passes_and_says_so(tmp_path: Path, template: Path) -> None:
    repo = tmp_path / "late"
    repo.mkdir()
    ok(repo, "git", "init", "--quiet", "--initial-branch=main")
    (repo / "README.md").write_text("before the contract\n")
    commit(repo, "no protos yet")
    shutil.copytree(template, repo, ignore=shutil.ignore_patterns(".git"), dirs_exist_ok=True)
    commit(repo, "add the contract")
    result = run(repo, *BREAKING)
    assert result.returncode == 0, result.stderr
    assert "has no buf.yaml and proto/ yet" in result.stdout


def test_edited_generated_file_fails_drift(repo: Path) -> None:
    edited = (repo / GEN_SAMPLE).read_text() + "\n# hand edit\n"
    (repo / GEN_SAMPLE).write_text(edited)
    result = run(repo, *DRIFT)
    assert result.returncode != 0
    assert f"differs: {GEN_SAMPLE}" in result.stdout
    assert "+# hand edit" not in result.stdout and "-# hand edit" in result.stdout
    assert "make gen" in result.stderr
    assert (repo / GEN_SAMPLE).read_text() == edited  # the working tree is left alone


def test_proto_change_not_regenerated_fails_drift(repo: Path) -> None:
    edit(repo, SAMPLE, "  int32 read_count = 4;\n", "  int32 read_count = 4;\n  string tag = 5;\n")
    result = run(repo, *DRIFT)
    assert result.returncode != 0
    assert "differs: gen/python/tips/sample/v1/sample_pb2.pyi" in result.stdout
    # The web app's types drift with them.
    assert "differs: web/src/gen/tips/sample/v1/sample_pb.ts" in result.stdout
    assert "+  tag?: string;" in result.stdout
    assert "make gen" in result.stderr


def test_missing_and_extra_generated_files_fail_drift(repo: Path) -> None:
    (repo / GEN_SAMPLE).unlink()
    stray = repo / "gen/python/tips/sample/v1/stray_pb2.py"
    stray.write_text("# no proto makes this\n")
    result = run(repo, *DRIFT)
    assert result.returncode != 0
    assert "missing: gen/python/tips/sample/v1/sample_pb2.py" in result.stdout
    assert "extra (no proto generates it): gen/python/tips/sample/v1/stray_pb2.py" in (
        result.stdout
    )
