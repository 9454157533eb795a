"""The shared kernel: what every Tips mesh service needs, in one place.

bootstrap (server), settings, telemetry, errors, identity, DB, bus. Services
stay thin on top of it. The kernel never imports from ``services`` or
``gateway``.
"""
