"""Run ``buf breaking`` against the previous commit, and never against nothing.

The base is chosen so that a developer and CI check the same thing:
- ``TIPS_BREAKING_AGAINST=<ref>`` wins when set;
- an uncommitted change under proto/ (or to buf.yaml) is checked against HEAD;
- a clean tree (CI) is checked against HEAD~1, the commit before the one under test.

A shallow clone that lacks the base is deepened once; if the base is still missing the
check fails loudly, because ``.git#branch=main`` or a missing ref would otherwise let a
breaking change pass unseen. A root commit or a base without buf.yaml/proto has nothing
to break, and passes with a message saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Paths whose uncommitted edits mean "compare the working tree with HEAD".
CONTRACT_PATHS = ("proto", "buf.yaml")


class BreakingCheckError(Exception):
    """The base commit could not be determined: the check must not pass silently."""


def git(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=check)


def find_buf() -> str:
    # Prefer the buf next to the running interpreter (the venv's), then PATH.
    beside = Path(sys.executable).parent / "buf"
    if beside.exists():
        return str(beside)
    found = shutil.which("buf")
    if found is None:
        raise BreakingCheckError("buf not found: run `make venv` (buf-bin is a dev dependency)")
    return found


def resolve_commit(ref: str) -> str | None:
    result = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def is_shallow() -> bool:
    return git("rev-parse", "--is-shallow-repository").stdout.strip() == "true"


def tree_differs_from_head() -> bool:
    # --porcelain lists modified, staged and untracked files alike.
    status = git("status", "--porcelain", "--untracked-files=all", "--", *CONTRACT_PATHS)
    return bool(status.stdout.strip())


def deepen() -> str:
    """Fetch one more commit of history; return git's complaint, empty on success."""
    result = git("fetch", "--quiet", "--deepen=1", check=False)
    if result.returncode == 0:
        return ""
    return "; ".join(line for line in result.stderr.splitlines() if line.strip()) or "failed"


def choose_base() -> tuple[str | None, str]:
    """Return (commit sha or None when there is nothing to compare, why it was chosen)."""
    override = os.environ.get("TIPS_BREAKING_AGAINST", "").strip()
    if override:
        sha = resolve_commit(override)
        if sha is None and is_shallow():
            deepen()
            sha = resolve_commit(override)
        if sha is None:
            raise BreakingCheckError(
                f"TIPS_BREAKING_AGAINST={override!r} does not name a commit in this clone"
            )
        return sha, f"TIPS_BREAKING_AGAINST={override}"

    head = resolve_commit("HEAD")
    if head is None:
        return None, "the repository has no commits yet"
    if tree_differs_from_head():
        return head, "HEAD (uncommitted changes under proto/ or buf.yaml)"

    sha = resolve_commit("HEAD~1")
    if sha is None and is_shallow():
        complaint = deepen()
        sha = resolve_commit("HEAD~1")
        if sha is None:
            raise BreakingCheckError(
                "shallow clone without the previous commit, and `git fetch --deepen=1` "
                f"could not fetch it ({complaint or 'nothing fetched'}). Clone with "
                "--depth 2 or more (or run `git fetch --deepen=1`), or set "
                "TIPS_BREAKING_AGAINST=<ref> to a commit this clone has"
            )
    if sha is None:
        return None, f"HEAD {head[:12]} is the root commit: there is no previous commit"
    return sha, "HEAD~1 (clean working tree: the commit before HEAD)"


def has_contract(sha: str, prefix: str) -> bool:
    return all(
        git("cat-file", "-e", f"{sha}:{prefix}{path}", check=False).returncode == 0
        for path in CONTRACT_PATHS
    )


def main() -> int:
    try:
        buf = find_buf()
        sha, why = choose_base()
    except BreakingCheckError as error:
        print(f"buf breaking: FAILED: {error}", file=sys.stderr)
        return 2
    if sha is None:
        print(f"buf breaking: skipped, {why}.")
        return 0
    prefix = git("rev-parse", "--show-prefix").stdout.strip()
    if not has_contract(sha, prefix):
        print(f"buf breaking: skipped, base {sha[:12]} has no buf.yaml and proto/ yet ({why}).")
        return 0
    # The common dir holds every object, also when this checkout is a git worktree.
    git_dir = git("rev-parse", "--path-format=absolute", "--git-common-dir").stdout.strip()
    against = f"{git_dir}#format=git,ref={sha}"
    if prefix:
        against += f",subdir={prefix.rstrip('/')}"
    print(f"buf breaking: comparing the working tree with {sha[:12]}, {why}")
    result = subprocess.run([buf, "breaking", "--against", against], cwd=ROOT, check=False)
    if result.returncode != 0:
        print(
            f"buf breaking: FAILED against {sha[:12]}. Keep the change compatible, "
            "or put it in a new vN package (docs/contracts.md).",
            file=sys.stderr,
        )
        return result.returncode
    print("buf breaking: no breaking changes.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
