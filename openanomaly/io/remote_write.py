"""Prometheus remote-write 1.0 wire format: protobuf messages and a vectorised encoder.

The messages are those of ``prometheus/prompb`` (``types.proto`` / ``remote.proto``),
proto3, as fixed by the remote-write 1.0 specification
(https://prometheus.io/docs/specs/remote_write_spec/)::

    message WriteRequest { repeated TimeSeries timeseries = 1; reserved 2; reserved 3; }
    message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    message Label        { string name = 1; string value = 2; }
    message Sample       { double value = 1; int64 timestamp = 2; }

The descriptor is built at import time with ``google.protobuf`` (no generated code, no
``protoc`` step) in a private descriptor pool, so it cannot clash with another library
that registers ``prometheus.WriteRequest`` in the default pool.

Why two encoders: the protobuf encoder builds one Python ``Sample`` object per sample,
which dominates writing a day of points for thousands of series.
``encode_write_request`` instead lays out all samples of a batch with numpy (a sample is
a fixed pattern of tag bytes, 8 little-endian value bytes and a varint timestamp) and
writes the label fields as plain bytes (:func:`encode_labels`). Its output decodes to
the same message as the protobuf encoder's and is byte-for-byte the same when no value
or timestamp is exactly zero (the tests check both); ``benchmarks/remote_write_encode.py``
compares the two (``benchmarks/results/remote_write_encode.json``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import cramjam
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "Label",
    "Sample",
    "TimeSeries",
    "TimestampGrid",
    "WriteRequest",
    "compress",
    "decode_write_request",
    "encode_labels",
    "encode_write_request",
    "encode_write_request_protobuf",
]

_F = descriptor_pb2.FieldDescriptorProto


def _build_messages() -> dict[str, type]:
    file = descriptor_pb2.FileDescriptorProto(name="openanomaly/prompb.proto", package="prometheus")
    file.syntax = "proto3"

    def message(name: str, fields: Sequence[tuple[str, int, int, str | None, bool]]) -> None:
        proto = file.message_type.add(name=name)
        for field_name, number, field_type, type_name, repeated in fields:
            field = proto.field.add(
                name=field_name,
                number=number,
                type=field_type,
                label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
            )
            if type_name:
                field.type_name = type_name

    message("Label", [("name", 1, _F.TYPE_STRING, None, False), ("value", 2, _F.TYPE_STRING, None, False)])
    message(
        "Sample", [("value", 1, _F.TYPE_DOUBLE, None, False), ("timestamp", 2, _F.TYPE_INT64, None, False)]
    )
    message(
        "TimeSeries",
        [
            ("labels", 1, _F.TYPE_MESSAGE, ".prometheus.Label", True),
            ("samples", 2, _F.TYPE_MESSAGE, ".prometheus.Sample", True),
        ],
    )
    message("WriteRequest", [("timeseries", 1, _F.TYPE_MESSAGE, ".prometheus.TimeSeries", True)])
    write_request = file.message_type[-1]
    write_request.reserved_range.add(start=2, end=4)

    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"prometheus.{name}"))
        for name in ("Label", "Sample", "TimeSeries", "WriteRequest")
    }


_MESSAGES = _build_messages()
Label = _MESSAGES["Label"]
Sample = _MESSAGES["Sample"]
TimeSeries = _MESSAGES["TimeSeries"]
WriteRequest = _MESSAGES["WriteRequest"]

_TAG_TIMESERIES = 0x0A  # WriteRequest.timeseries: field 1, length-delimited
_TAG_LABELS = 0x0A  # TimeSeries.labels: field 1, length-delimited
_TAG_NAME = 0x0A  # Label.name: field 1, length-delimited
_TAG_VALUE_STR = 0x12  # Label.value: field 2, length-delimited
_TAG_SAMPLES = 0x12  # TimeSeries.samples: field 2, length-delimited
_TAG_VALUE = 0x09  # Sample.value: field 1, 64-bit
_TAG_TIMESTAMP = 0x10  # Sample.timestamp: field 2, varint
_TIMESERIES_TAG_BYTE = bytes([_TAG_TIMESERIES])
_VARINT_LIMITS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)
_VARINT_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)
_VARINT_POSITIONS = np.arange(10)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, data: bytes) -> bytes:
    """One length-delimited protobuf field: tag, varint length, bytes."""
    size = len(data)
    return bytes((tag, size)) + data if size < 0x80 else bytes((tag,)) + _varint(size) + data


@functools.lru_cache(maxsize=1 << 20)
def _label_field(name: str, value: str) -> bytes:
    """One label pair's encoded field, kept: a window writes the same label sets every time."""
    return _field(_TAG_LABELS, _field(_TAG_NAME, name.encode()) + _field(_TAG_VALUE_STR, value.encode()))


def encode_labels(labels: Mapping[str, str]) -> bytes:
    """The ``TimeSeries.labels`` fields for one label set, ready to prefix its samples.

    Labels are sorted by name (byte order), as the spec requires; ``__name__`` thus comes
    first unless a label name starts with an upper-case letter. Empty values are dropped:
    in Prometheus an empty label is the same as no label, and receivers reject them.
    Written field by field from kept pairs (the bytes ``TimeSeries(labels=...)
    .SerializeToString()`` gives; the tests check): a large window writes hundreds of
    thousands of label sets, and building protobuf objects for each was most of its write.
    """
    return b"".join([_label_field(name, value) for name, value in sorted(labels.items()) if value != ""])


class TimestampGrid:
    """The timestamps of a shared time grid, varint-encoded once for every batch.

    Series written together share the grid of a ``SeriesMatrix``, so each timestamp's
    bytes (tag + varint) are computed once here and gathered per sample.

    Args:
        timestamps: int64 milliseconds, shape ``(t,)``.
    """

    def __init__(self, timestamps: np.ndarray) -> None:
        unsigned = np.ascontiguousarray(timestamps, dtype=np.int64).view(np.uint64)
        varint_len = 1 + (unsigned[:, None] >= _VARINT_LIMITS).sum(axis=1, dtype=np.int64)
        groups = (unsigned[:, None] >> _VARINT_SHIFTS) & np.uint64(0x7F)
        groups |= np.where((varint_len - 1)[:, None] > _VARINT_POSITIONS, np.uint64(0x80), np.uint64(0))
        #: shape (t, 11): the timestamp tag byte then the varint, zero-padded
        self.encoded = np.empty((len(unsigned), 11), dtype=np.uint8)
        self.encoded[:, 0] = _TAG_TIMESTAMP
        self.encoded[:, 1:] = groups
        #: shape (t,): bytes used in each row of ``encoded``
        self.length = 1 + varint_len
        #: the common width when every timestamp encodes to the same number of bytes
        #: (any grid between 1971 and 2109), else None
        self.width: int | None = None
        #: the encoded bytes cut into little-endian unsigned ints of 8/4/2/1 bytes, one
        #: (offset, column of shape (t,)) per piece: gathering and storing whole ints is
        #: much faster in numpy than copying byte columns
        self.pieces: list[tuple[int, np.ndarray]] = []
        if len(unsigned) and np.all(self.length == self.length[0]):
            self.width = int(self.length[0])
            for offset, size in _pieces(self.width):
                column = np.ascontiguousarray(self.encoded[:, offset : offset + size]).view(f"<u{size}")
                self.pieces.append((offset, column.ravel()))


def encode_write_request(
    label_blobs: Sequence[bytes],
    series_index: np.ndarray,
    columns: np.ndarray,
    grid: TimestampGrid,
    values: np.ndarray,
) -> bytes:
    """Serialise one ``WriteRequest`` (uncompressed) from flat per-sample arrays.

    Args:
        label_blobs: ``encode_labels`` output for each series in the request, length k.
        series_index: int, shape ``(m,)``, non-decreasing, ``0 <= series_index < k``: the
            series each sample belongs to (samples of one series are contiguous). Every
            series must own at least one sample.
        columns: int, shape ``(m,)``: each sample's position in ``grid``, increasing
            within a series.
        grid: the encoded time grid.
        values: float64, shape ``(m,)`` (NaN is encoded as is; callers drop it).

    Returns:
        The protobuf bytes. They are what ``WriteRequest.SerializeToString()`` gives for
        the same series, except that a zero value or timestamp is written out where
        proto3 would omit it; both decode to the same message. Writing every field keeps
        all sample records the same size, which is what makes the layout a numpy copy.
    """
    if len(series_index) == 0:
        return b""
    values = np.ascontiguousarray(values, dtype="<f8")
    if grid.width is not None:
        # Every sample record has the same bytes but for value and timestamp: one
        # structured array, filled field by field.
        records = np.empty(len(values), dtype=_record_dtype(grid.width))
        records["samples_tag"] = _TAG_SAMPLES
        records["length"] = 9 + grid.width
        records["value_tag"] = _TAG_VALUE
        records["value"] = values
        for offset, column in grid.pieces:
            records[f"time{offset}"] = column[columns]
        packed = memoryview(records.view(np.uint8))
        per_series = np.bincount(series_index, minlength=len(label_blobs)) * records.dtype.itemsize
    else:
        # Timestamps of different varint lengths: lay records out at the widest and
        # mask out the unused varint bytes.
        time_len = grid.length[columns]
        width = int(time_len.max())
        table = np.empty((len(values), 11 + width), dtype=np.uint8)
        table[:, 0] = _TAG_SAMPLES
        table[:, 1] = 9 + time_len
        table[:, 2] = _TAG_VALUE
        table[:, 3:11] = values.view(np.uint8).reshape(-1, 8)
        table[:, 11:] = grid.encoded[columns, :width]
        keep = np.ones(table.shape, dtype=bool)
        keep[:, 11:] = np.arange(width) < time_len[:, None]
        packed = memoryview(table[keep])
        per_series = np.bincount(series_index, weights=11 + time_len, minlength=len(label_blobs)).astype(
            np.int64
        )

    parts: list[bytes | memoryview] = []
    begin = 0
    for blob, end in zip(label_blobs, np.cumsum(per_series).tolist(), strict=True):
        parts.append(_TIMESERIES_TAG_BYTE + _varint(len(blob) + end - begin) + blob)
        parts.append(packed[begin:end])
        begin = end
    return b"".join(parts)


def _pieces(width: int) -> list[tuple[int, int]]:
    """``width`` bytes as (offset, size) pieces of 8, 4, 2 and 1 bytes."""
    pieces, offset = [], 0
    for size in (8, 4, 2, 1):
        while width - offset >= size:
            pieces.append((offset, size))
            offset += size
    return pieces


@functools.cache
def _record_dtype(width: int) -> np.dtype:
    """One sample record, packed: samples tag, length, value tag, value, timestamp pieces."""
    fields = [("samples_tag", "u1"), ("length", "u1"), ("value_tag", "u1"), ("value", "<f8")]
    fields += [(f"time{offset}", f"<u{size}") for offset, size in _pieces(width)]
    return np.dtype(fields)


def encode_write_request_protobuf(
    labels: Sequence[Mapping[str, str]], timestamps: Sequence[np.ndarray], values: Sequence[np.ndarray]
) -> bytes:
    """Reference encoder through protobuf message objects (slow; tests and debugging).

    One entry per series: its label set, its timestamps (int64 ms) and values.
    """
    request = WriteRequest()
    for label_set, series_times, series_values in zip(labels, timestamps, values, strict=True):
        series = request.timeseries.add()
        for name, value in sorted(label_set.items()):
            if value != "":
                series.labels.add(name=name, value=value)
        for timestamp, value in zip(
            np.asarray(series_times).tolist(), np.asarray(series_values).tolist(), strict=True
        ):
            series.samples.add(value=value, timestamp=timestamp)
    return request.SerializeToString()


def compress(payload: bytes) -> bytes:
    """Snappy *block* format (not the framed format), as remote write requires."""
    return bytes(cramjam.snappy.compress_raw(payload))


def decode_write_request(body: bytes) -> WriteRequest:  # type: ignore[valid-type]
    """Decompress and parse a remote-write request body (tests, debugging receivers)."""
    request = WriteRequest()
    request.ParseFromString(bytes(cramjam.snappy.decompress_raw(body)))
    return request
