"""The auth service.

Sign-in with Google and Apple (OIDC), sessions, access and refresh tokens, the JWKS.
"""
