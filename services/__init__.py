"""The mesh's services, one package each, all built on the kernel."""
