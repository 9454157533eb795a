"""``python -m gateway``: the product edge (as ``tips serve gateway``), or any API with flags."""

from gateway.server import main

if __name__ == "__main__":
    main()
