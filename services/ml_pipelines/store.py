"""The ml_pipelines service's tables, all in schema `ml_pipelines`."""

from sqlalchemy import MetaData

from kernel.outbox import outbox_table, processed_table

metadata = MetaData(schema="ml_pipelines")
# Events waiting to be published (transactional outbox).
outbox = outbox_table(metadata)
# Bus messages already handled, for idempotent consumers.
processed_messages = processed_table(metadata)
