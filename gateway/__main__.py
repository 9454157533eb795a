"""``python -m gateway``: the same as ``tips serve gateway``."""

from gateway.server import run

if __name__ == "__main__":
    run()
