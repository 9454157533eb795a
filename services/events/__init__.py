"""The events service: signal ingress, store and the ``SignalRecorded`` stream."""
