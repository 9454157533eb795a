"""Outbox rows and protobuf wire helpers of the kernel: the bytes and headers relayed."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import MetaData

from kernel.bus import CONTENT_TYPE_HEADER, MSG_ID_HEADER, message_headers, subject_of
from kernel.outbox import EventRows, insert_rows_sql, outbox_row, outbox_table, row_arrays
from kernel.wire import FIXED64, key, length_delimited, varint
from tips.events.v1 import events_pb2

pytestmark = pytest.mark.unit


def test_varint_matches_the_protobuf_encoding() -> None:
    assert varint(0) == b"\x00"
    assert varint(127) == b"\x7f"
    assert varint(128) == b"\x80\x01"
    assert varint(300) == b"\xac\x02"
    with pytest.raises(ValueError):
        varint(-1)
    assert key(1) == b"\x0a"
    assert key(2, FIXED64) == b"\x11"
    assert key(20) == b"\xa2\x01"  # field numbers above 15 take two bytes


def test_length_delimited_fields_parse_as_the_message() -> None:
    body = "é" * 100
    got = length_delimited(1, body.encode()) + length_delimited(3, b"users/u1")
    assert events_pb2.SignalRecorded.FromString(got) == events_pb2.SignalRecorded(
        event_id=body, user="users/u1"
    )


def test_event_rows_headers_equal_the_single_row_headers() -> None:
    rows = EventRows(events_pb2.SignalRecorded)
    msg_id = 'users/u1/signals/a"b'
    row = rows.row(msg_id, b"\x01")
    assert json.loads(row.headers) == message_headers(events_pb2.SignalRecorded, msg_id)
    assert json.loads(row.headers)[MSG_ID_HEADER] == msg_id
    assert json.loads(row.headers)[CONTENT_TYPE_HEADER].endswith("tips.events.v1.SignalRecorded")
    assert row.subject == subject_of(events_pb2.SignalRecorded)
    assert row.message_type == "tips.events.v1.SignalRecorded"


def test_event_rows_carry_the_trace_context_of_the_request_they_are_made_in() -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from kernel import outbox

    outbox._BASICS.clear()  # the first rows of a type made inside a traced call, too
    traced = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(traced)):
        inside = EventRows(events_pb2.SignalRecorded).row("m1", b"")
        expected = message_headers(events_pb2.SignalRecorded, "m1")
    outside = EventRows(events_pb2.SignalRecorded).row("m1", b"")
    assert json.loads(outside.headers) == message_headers(events_pb2.SignalRecorded, "m1")
    assert json.loads(inside.headers) == expected
    assert json.loads(inside.headers)["traceparent"] == f"00-{0xABC:032x}-{0xDEF:016x}-01"
    assert "traceparent" not in json.loads(outside.headers)  # no span: the cached head


def test_outbox_row_serialises_the_message() -> None:
    event = events_pb2.SignalRecorded(event_id="e1", user="users/u1")
    row = outbox_row(event, msg_id="e1")
    assert events_pb2.SignalRecorded.FromString(row.payload) == event
    assert json.loads(row.headers)[MSG_ID_HEADER] == "e1"
    assert row_arrays([row, row])[0] == ["e1", "e1"]
    assert row_arrays([]) == [[], [], [], [], []]


def test_insert_sql_takes_one_placeholder_per_column() -> None:
    table = outbox_table(MetaData(schema="svc"))
    sql = insert_rows_sql(table, ["$1", "$2", "$3", "$4", "$5"])
    columns = "msg_id, subject, message_type, payload, headers"
    assert sql.startswith(f"INSERT INTO svc.outbox ({columns})")
    assert "ON CONFLICT (msg_id) DO NOTHING" in sql
    with pytest.raises(ValueError):
        insert_rows_sql(table, ["$1"])
