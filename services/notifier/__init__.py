"""The notifier service.

Push and email delivery with quiet hours, dedupe and frequency caps.
"""
