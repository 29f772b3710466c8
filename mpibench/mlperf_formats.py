"""The MLPerf Storage dataset formats: JPEG images, TFRecord files and Parquet tables.

Pure apart from in-memory encoding, like formats.py, which dispatches to this module:

- jpeg: one image a file (retinanet), seeded noise encoded by Pillow at JPEG_QUALITY, its
  pixel count chosen so the file comes out near the file's drawn record size;
- tfrecord: ``samples_per_file`` records in TensorFlow's framing (little-endian uint64
  length, masked CRC32C of the length, the data, masked CRC32C of the data), each a
  serialized ``tf.train.Example`` with the features ``image`` (the record's bytes) and
  ``size`` (int64), as DLIO writes them for resnet50 and cosmoflow;
- parquet: ``samples_per_file`` rows of a published column set (mlperf.COLUMN_SETS),
  uncompressed, in row groups of ``row_group_size`` rows, written by pyarrow. Training
  reads it row group by row group and only the columns marked read, through a file
  object over the backend: only those column chunks (and the footer) are fetched.
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import crc32c
import numpy as np

from mpibench.buffers import aligned_buffer, file_seed, fill_random
from mpibench.errors import VerifyError
from mpibench.plan import round_down, round_up

JPEG_QUALITY = 90
_CONTENT_STREAM = 1  # as formats._CONTENT_STREAM: the content's SeedSequence key
_MASK_DELTA = 0xA282EAD8


def load_libraries(fmt: str) -> None:
    """Import the library a format's decoding needs now, so its import is not timed as I/O."""
    if fmt == "jpeg":
        import PIL.Image  # noqa: F401
    elif fmt == "parquet":
        import pyarrow.parquet  # noqa: F401


# -- TFRecord ---------------------------------------------------------------------------

def masked_crc(data: Any) -> int:
    """TFRecord's masked CRC32C: rotate right by 15 bits, add 0xa282ead8 (mod 2^32)."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, length: int) -> bytes:
    """The tag and length of a length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(length)


@lru_cache(maxsize=64)
def example_parts(record: int) -> tuple[bytes, bytes]:
    """(bytes before, bytes after) the image bytes in the serialized Example of one record.

    Example{features: Features{feature: {"image": Feature{bytes_list{value: [image]}},
    "size": Feature{int64_list{value: [record]}}}}}: everything but the image depends
    only on its length, so a record is prefix + image + suffix.
    """
    size_value = _varint(record)
    size_feature = _field(3, len(size_value) + 2) + _field(1, len(size_value)) + size_value
    size_entry_body = _field(1, 4) + b"size" + _field(2, len(size_feature)) + size_feature
    size_entry = _field(1, len(size_entry_body)) + size_entry_body
    bytes_list = _field(1, record)  # BytesList.value, then the image
    image_feature_len = len(bytes_list) + record
    image_feature_head = _field(1, image_feature_len) + bytes_list  # Feature.bytes_list
    image_entry_len = len(_field(1, 5)) + 5 + len(_field(2, len(image_feature_head) + record)) \
        + len(image_feature_head) + record
    image_entry_head = (_field(1, image_entry_len) + _field(1, 5) + b"image"
                        + _field(2, len(image_feature_head) + record) + image_feature_head)
    features_len = len(image_entry_head) + record + len(size_entry)
    prefix = _field(1, features_len) + image_entry_head  # Example.features
    return prefix, size_entry


def tfrecord_size(samples: int, record: int) -> int:
    """Bytes of a TFRecord file of `samples` records of `record` bytes."""
    prefix, suffix = example_parts(record)
    return samples * (16 + len(prefix) + record + len(suffix))


def encode_tfrecord(samples: np.ndarray, buf: Any) -> int:
    """Write the records (samples x record bytes) into `buf` as TFRecord; return the size."""
    record = samples.shape[1]
    prefix, suffix = example_parts(record)
    length = len(prefix) + record + len(suffix)
    head = struct.pack("<Q", length)
    head += struct.pack("<I", masked_crc(head))
    view = memoryview(buf)
    offset = 0
    for row in samples:
        data_at = offset + 12
        view[offset:data_at] = head
        view[data_at: data_at + len(prefix)] = prefix
        view[data_at + len(prefix): data_at + len(prefix) + record] = row.data
        view[data_at + len(prefix) + record: data_at + length] = suffix
        view[data_at + length: data_at + length + 4] = struct.pack("<I", masked_crc(view[data_at: data_at + length]))
        offset = data_at + length + 4
    return offset


def decode_tfrecord(view: memoryview, samples: int, record: int, path: str) -> np.ndarray:
    """The images of a TFRecord file (samples x record), CRCs and framing checked."""
    prefix, suffix = example_parts(record)
    out = np.empty((samples, record), dtype=np.uint8)
    offset = 0
    for i in range(samples):
        if offset + 12 > len(view):
            raise VerifyError(f"{path}: {i} TFRecord records, expected {samples}",
                              "the dataset was changed after datagen: generate it again", path=path)
        (length,) = struct.unpack_from("<Q", view, offset)
        (length_crc,) = struct.unpack_from("<I", view, offset + 8)
        data = view[offset + 12: offset + 12 + length]
        if masked_crc(view[offset: offset + 8]) != length_crc or len(data) != length \
                or offset + 16 + length > len(view):
            raise VerifyError(f"{path}: TFRecord record {i} has a bad length or length CRC",
                              "the dataset is damaged: generate it again", path=path)
        (data_crc,) = struct.unpack_from("<I", view, offset + 12 + length)
        if masked_crc(data) != data_crc:
            raise VerifyError(f"{path}: TFRecord record {i} fails its CRC32C",
                              "the storage returned wrong data", path=path)
        if length != len(prefix) + record + len(suffix) or data[: len(prefix)] != prefix \
                or data[len(prefix) + record:] != suffix:
            raise VerifyError(f"{path}: TFRecord record {i} is not the Example of a {record}-byte image",
                              "the dataset was generated with other settings: generate it again", path=path)
        out[i] = np.frombuffer(data[len(prefix): len(prefix) + record], dtype=np.uint8)
        offset += 16 + length
    if offset != len(view):
        raise VerifyError(f"{path}: {len(view) - offset} bytes after the last TFRecord record",
                          "the dataset was changed after datagen: generate it again", path=path)
    return out


# -- JPEG -------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _jpeg_bytes_per_pixel() -> float:
    """Bytes per pixel of seeded RGB noise at JPEG_QUALITY (measured once: Pillow's own)."""
    side = 256
    return len(_jpeg_of(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))) / side**2


def _jpeg_of(pixels: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def jpeg_shape(record: int) -> tuple[int, int]:
    """(height, width) of the image whose JPEG is near `record` bytes (4:3, at least 8 x 8)."""
    pixels = max(64.0, record / _jpeg_bytes_per_pixel())
    height = max(8, round((pixels * 3 / 4) ** 0.5))
    return height, max(8, round(pixels / height))


def encode_jpeg(seed: int, index: int, record: int) -> bytes:
    """The JPEG file of dataset file `index`: seeded RGB noise sized for `record` bytes."""
    height, width = jpeg_shape(record)
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    fill_random(memoryview(pixels.reshape(-1)), file_seed(seed, index, _CONTENT_STREAM))
    return _jpeg_of(pixels)


def decode_jpeg(source: Any, record: int, path: str) -> np.ndarray:
    """The decoded pixels of a JPEG file read back (`source`: a file object over the bytes),
    as a loader's PIL.Image.open does."""
    from PIL import Image

    try:
        with Image.open(source) as image:
            pixels = np.asarray(image.convert("RGB"))
    except Exception as exc:
        raise VerifyError(f"{path} is not a readable JPEG file: {exc}",
                          "the dataset is damaged: generate it again", path=path) from None
    if pixels.shape[:2] != jpeg_shape(record):
        raise VerifyError(f"{path}: a {pixels.shape[1]} x {pixels.shape[0]} image, expected "
                          f"{jpeg_shape(record)[1]} x {jpeg_shape(record)[0]}",
                          "the dataset was generated with other settings: generate it again", path=path)
    return pixels


# -- Parquet ----------------------------------------------------------------------------

def parquet_columns(ds: Any) -> tuple[Any, ...]:
    """The column set of a parquet dataset."""
    from mpibench.mlperf import COLUMN_SETS

    return COLUMN_SETS[ds.columns]


def row_group_rows(ds: Any) -> int:
    """Rows per row group: dataset.row_group_size, else the published value, else the file."""
    from mpibench.mlperf import ROW_GROUP_ROWS

    return ds.row_group_size or ROW_GROUP_ROWS.get(ds.columns) or ds.samples_per_file


def column_values(ds: Any, index: int, column: int) -> np.ndarray:
    """The values of one column of file `index` (rows x size, seeded random bits)."""
    spec = parquet_columns(ds)[column]
    values = np.empty(ds.samples_per_file * spec.size, dtype=spec.dtype)
    fill_random(memoryview(values.view(np.uint8)), file_seed(ds.seed, index, _CONTENT_STREAM, column))
    return values


def encode_parquet(ds: Any, index: int) -> Any:
    """The Parquet file of dataset file `index`, as a pyarrow buffer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays, fields = [], []
    for j, spec in enumerate(parquet_columns(ds)):
        values = pa.array(column_values(ds, index, j))
        if spec.size > 1:
            values = pa.FixedSizeListArray.from_arrays(values, spec.size)
        arrays.append(values)
        fields.append(pa.field(spec.name, values.type, nullable=False))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    sink = pa.BufferOutputStream()
    # Random values do not compress nor make dictionaries: plain, uncompressed pages.
    pq.write_table(table, sink, row_group_size=row_group_rows(ds), compression="none",
                   use_dictionary=False, write_statistics=False)
    return sink.getvalue()


class BackendFile(io.RawIOBase):
    """A read-only file over a backend handle, each read aligned for O_DIRECT.

    pyarrow asks for the footer and then for the column chunks it needs; every request
    becomes one backend.read_at of the aligned range around it. `fetched` counts the
    bytes the storage returned, `io_s` the time spent in those reads.
    """

    def __init__(self, backend: Any, handle: Any, size: int) -> None:
        super().__init__()
        self.backend = backend
        self.handle = handle
        self.size = size
        self.align = max(1, backend.alignment)
        self.pos = 0
        self.fetched = 0
        self.io_s = 0.0
        self._buf: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        end = min(self.size, self.pos + len(target))
        if end <= self.pos:
            return 0
        if self.align == 1:  # buffered I/O: straight into pyarrow's buffer, no bounce copy
            t = time.perf_counter()
            got = self.backend.read_at(self.handle, target[: end - self.pos], self.pos)
            self.io_s += time.perf_counter() - t
            self.fetched += got
            self.pos += got
            return got
        start = round_down(self.pos, self.align)
        stop = round_up(end, self.align)
        if self._buf is None or len(self._buf) < stop - start:
            self._buf = aligned_buffer(round_up(stop - start, 1 << 20))
        t = time.perf_counter()
        got = self.backend.read_at(self.handle, memoryview(self._buf)[: stop - start], start)
        self.io_s += time.perf_counter() - t
        self.fetched += got
        n = max(0, min(end, start + got) - self.pos)
        target[:n] = memoryview(self._buf)[self.pos - start: self.pos - start + n]
        self.pos += n
        return n

    def read(self, size: int = -1) -> bytes | bytearray:
        end = self.size if size is None or size < 0 else min(self.size, self.pos + size)
        out = bytearray(max(0, end - self.pos))
        n = self.readinto(out) if out else 0
        if n < len(out):
            del out[n:]
        return out  # pyarrow takes any bytes-like object: no copy into bytes


def read_parquet(ds: Any, index: int, source: Any, path: str, *, verify: bool,
                 on_rows: Callable[[int], None] | None = None) -> int:
    """Read the columns marked read, row group by row group; return the rows read.

    `on_rows(n)` is called after each row group with its rows, so that a loader can hand
    out batches of them before the rest of the file is read.
    """
    import pyarrow.parquet as pq

    columns = parquet_columns(ds)
    wanted = [j for j, c in enumerate(columns) if c.read]
    names = [columns[j].name for j in wanted]
    expected: dict[int, bytes] = {}
    rows = 0
    try:
        # pre_buffer: pyarrow asks for the read columns' chunks of a row group in a few
        # coalesced ranges (59 instead of 81 requests on a dlrm file, 5x faster), still
        # fetching only those columns.
        pf = pq.ParquetFile(source, pre_buffer=True)
        meta = pf.metadata
        if meta.num_rows != ds.samples_per_file or meta.num_columns != len(columns):
            raise VerifyError(f"{path}: {meta.num_rows} rows of {meta.num_columns} columns, expected "
                              f"{ds.samples_per_file} of {len(columns)}",
                              "the dataset was generated with other settings: generate it again", path=path)
        for group in range(pf.num_row_groups):
            table = pf.read_row_group(group, columns=names, use_threads=False)
            if verify:
                for j in wanted:
                    if j not in expected:
                        expected[j] = column_values(ds, index, j).view(np.uint8).tobytes()
                    _verify_rows(table, columns[j], expected[j], rows, path)
            rows += table.num_rows
            if on_rows is not None:
                on_rows(table.num_rows)
    except VerifyError:
        raise
    except Exception as exc:
        raise VerifyError(f"{path} is not a readable Parquet file: {exc}",
                          "the dataset is damaged: generate it again", path=path) from None
    return rows


def _verify_rows(table: Any, spec: Any, expected: bytes, first_row: int, path: str) -> None:
    """Check one row group's values of a column against what datagen wrote from `first_row`."""
    part = table.column(spec.name).combine_chunks()
    got = (part.flatten() if spec.size > 1 else part).to_numpy(zero_copy_only=False)
    width = spec.size * np.dtype(spec.dtype).itemsize
    want = expected[first_row * width: (first_row + table.num_rows) * width]
    if got.view(np.uint8).tobytes() != want:
        raise VerifyError(f"data verification failed: {path} column {spec.name} differs from what "
                          "datagen wrote", "the storage returned wrong data", path=path)
