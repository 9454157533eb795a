"""What goes wrong before a call: the client's own errors.

Every message names what is wrong (the run dir looked for, the service asked
for and the ones there are, the file that cannot be read) and what to do.
RPC failures stay ``grpc.aio.AioRpcError``: the mesh's status details are for
the caller to read.
"""

from __future__ import annotations


class TipsClientError(Exception):
    """Base of the errors tipsclient raises itself."""


class ClientConfigError(TipsClientError):
    """The call cannot be set up from what was given: no run dir, unknown service, bad files."""


class CertificateFileError(ClientConfigError):
    """A CA, certificate or key file cannot be read; ``what`` names which one."""

    def __init__(self, what: str, path: str, reason: str) -> None:
        super().__init__(f"{what}: cannot read {path}: {reason}")
        self.what = what
        self.path = path
        self.reason = reason


class ConnectError(TipsClientError):
    """The server was not reached, or did not prove it is the service meant."""
