"""The profile service.

Profiles and preferences, consents with their history, erasure.
"""
