"""The profile service's use cases: each one transaction (data + outbox event), then the read model.

- ``profiles``: create (sign-up, lazily, seeded), read, update with a FieldMask;
- ``consents``: grant, revoke, list with history, erasure requests.
"""
