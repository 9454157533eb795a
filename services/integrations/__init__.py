"""The integrations service.

Connectors to third-party APIs, the token vault, incremental signal fetch.
"""
