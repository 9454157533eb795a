"""Install Debian's Chromium for the browser tests (`make browser`).

Playwright drives the system's Chromium (packages ``chromium``): a test tool's
own browser download does not work on machines without open internet, and
Debian's build gets security updates with the system. Needs root, or sudo
without a password; otherwise it says what to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

PACKAGES = ["chromium"]


def main() -> int:
    if shutil.which("chromium"):
        return 0
    apt = shutil.which("apt-get")
    if apt is None:
        print(
            "make browser: no apt-get here; install Chromium yourself and put `chromium` on PATH",
            file=sys.stderr,
        )
        return 1
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None:
            print(f"make browser: run as root: apt-get install -y {' '.join(PACKAGES)}")
            return 1
        prefix = [sudo, "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, apt, "install", "-y", "--no-install-recommends", *PACKAGES]
    print(f"make browser: {' '.join(install)}", flush=True)
    if subprocess.run(install, env=env, check=False).returncode != 0:
        # A fresh machine may not have the package lists yet.
        subprocess.run([*prefix, apt, "update", "-q"], env=env, check=False)
        if subprocess.run(install, env=env, check=False).returncode != 0:
            print("make browser: installing Chromium failed (see above)", file=sys.stderr)
            return 1
    return 0 if shutil.which("chromium") else 1


if __name__ == "__main__":
    sys.exit(main())
