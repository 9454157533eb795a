"""The integrations service's use cases.

- ``connections``: connect (OAuth 2.0 + PKCE), read, update, delete, sync now, rewrap;
- ``sync``: one sync run of one connection (consent, tokens, fetch, ingest, cursor, status).
"""
