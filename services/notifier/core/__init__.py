"""The notifier's use cases.

- ``sending``: SendNotification (consent, channel, dedupe, quiet hours, cap; held for the digest);
- ``devices``: push devices with sealed tokens;
- ``notifications``: the delivery log (reads, rows to protos, outcome events);
- ``digests``: building a user's daily digest and following profile changes.

The delivery worker (``worker.py``) runs what is queued.
"""
