"""Dataset files: deterministic names, seeded sizes and content, encode and decode of every format.

Pure apart from in-memory encoding: no MPI and no storage I/O. Any rank can recompute the
name, record size and exact content of any file from the dataset config and the file's
index, so neither datagen nor train needs a listing or a broadcast, at any scale.

Each file holds `samples_per_file` records of one size, drawn per file from
normal(record_size, record_size_stdev), rounded and clipped at 1 byte:

- npz: ``numpy.savez`` (uncompressed) of ``x`` (samples x record bytes, uint8) and ``y``
  (int64 labels), as DLIO writes it;
- hdf5: one file with the dataset ``records`` (samples x record bytes, uint8, optionally
  chunked and gzip/lzf compressed) and ``labels`` (int64);
- raw: the records concatenated, nothing else;
- jpeg, tfrecord, parquet: the MLPerf Storage formats, in mlperf_formats (one JPEG image a
  file; TFRecord framing with CRC32C around tf.train.Example records; Parquet tables of a
  published column set).
"""

from __future__ import annotations

import io
import json
import mmap
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpibench.buffers import aligned_buffer, file_seed, fill_random
from mpibench.errors import ConfigError, MpibenchError, VerifyError
from mpibench.plan import RUN_DIR_PREFIX, file_name, file_names, round_up

EXTENSIONS = {"npz": "npz", "hdf5": "hdf5", "raw": "bin", "jpeg": "jpeg", "tfrecord": "tfrecord",
              "parquet": "parquet"}
MANIFEST_NAME = ".mpibench-dataset.json"
MANIFEST_VERSION = 1
#: the dataset keys a manifest records and train compares with its own config
MANIFEST_KEYS = ("num_files", "samples_per_file", "record_size", "record_size_stdev", "format",
                 "num_subfolders", "seed", "hdf5_chunk_size", "compression")
#: the keys a parquet dataset's manifest records besides (mlperf_formats)
PARQUET_KEYS = ("columns", "row_group_size")
_SIZE_STREAM = 0  # SeedSequence spawn keys: sizes, content and labels never share a stream
_CONTENT_STREAM = 1
_LABEL_STREAM = 2
LABEL_CLASSES = 1000


def file_key(ds: Any, index: int) -> str:
    """Storage key of dataset file `index` (relative to storage.root)."""
    return f"{ds.name}/{file_name(index, ds.num_files, EXTENSIONS[ds.format], ds.num_subfolders)}"


def file_keys(ds: Any) -> Callable[[int], str]:
    """file_key of any index of the dataset, as one function made once (for a loader)."""
    return file_names(ds.num_files, EXTENSIONS[ds.format], ds.num_subfolders, prefix=f"{ds.name}/")


def manifest_key(ds: Any) -> str:
    """Storage key of the dataset's manifest."""
    return f"{ds.name}/{MANIFEST_NAME}"


def subfolder_keys(ds: Any) -> list[str]:
    """The subfolders datagen creates (none without num_subfolders)."""
    return [f"{ds.name}/{k:05d}" for k in range(ds.num_subfolders)]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit mix of each value (splitmix64's finaliser), vectorised."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def record_sizes(ds: Any, indices: Any) -> np.ndarray:
    """Bytes of each record of the given files: seeded normal(mean, stdev), at least 1.

    A counter-based draw (two hashed uniforms of (seed, index), Box-Muller), so any rank
    gets any file's size, and a rank all of its files' sizes in one vectorised step.
    """
    index = np.atleast_1d(np.asarray(indices, dtype=np.uint64))
    if ds.record_size_stdev == 0:
        return np.full(index.shape, int(ds.record_size), dtype=np.int64)
    key = _splitmix64(_splitmix64(np.array([ds.seed], dtype=np.uint64)) ^ np.uint64(_SIZE_STREAM))
    with np.errstate(over="ignore"):
        words = _splitmix64((index * np.uint64(2))[:, None] + np.array([0, 1], dtype=np.uint64) ^ key)
    uniform = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
    normal = np.sqrt(-2.0 * np.log1p(-uniform[:, 0])) * np.cos(2.0 * np.pi * uniform[:, 1])
    sizes = np.rint(ds.record_size + ds.record_size_stdev * normal)
    return np.maximum(sizes, 1).astype(np.int64)


def record_size_of(ds: Any, index: int) -> int:
    """Bytes of each record of file `index` (see record_sizes)."""
    return int(record_sizes(ds, [index])[0])


def file_samples(ds: Any, index: int, record: int | None = None) -> np.ndarray:
    """The records of file `index` (samples x record bytes): seeded random, distinct per file."""
    record = record_size_of(ds, index) if record is None else record
    data = np.empty((ds.samples_per_file, record), dtype=np.uint8)
    fill_random(data.reshape(-1).data, file_seed(ds.seed, index, _CONTENT_STREAM))
    return data


def file_labels(ds: Any, index: int) -> np.ndarray:
    """The int64 labels of the records of file `index` (seeded)."""
    rng = np.random.default_rng(np.random.SeedSequence([ds.seed, index, _LABEL_STREAM]))
    return rng.integers(0, LABEL_CLASSES, ds.samples_per_file, dtype=np.int64)


def hdf5_chunks(samples: int, record: int, chunk_bytes: int | None) -> tuple[int, int] | None:
    """The chunk shape of the records dataset for a target chunk size (None: contiguous)."""
    if chunk_bytes is None:
        return None
    if chunk_bytes >= record:
        return (max(1, min(samples, chunk_bytes // record)), record)
    return (1, chunk_bytes)


def size_bound(ds: Any, index: int, record: int | None = None) -> int:
    """An upper estimate of file `index`'s size (exact for raw), to size read buffers."""
    record = record_size_of(ds, index) if record is None else record
    payload = ds.samples_per_file * record
    if ds.format == "raw":
        return payload
    if ds.format in ("jpeg", "tfrecord", "parquet"):
        from mpibench import mlperf_formats as mf

        if ds.format == "tfrecord":
            return mf.tfrecord_size(ds.samples_per_file, record)
        if ds.format == "jpeg":  # the calibration aims near `record`; noise varies a little
            return 2 * record + 65536
        groups = -(-ds.samples_per_file // mf.row_group_rows(ds))
        columns = mf.parquet_columns(ds)
        # Parquet has no 8-bit physical type: int8 columns are stored as INT32.
        stored = sum(max(4 if c.dtype == "int8" else 0, np.dtype(c.dtype).itemsize) * c.size for c in columns)
        return ds.samples_per_file * stored + 65536 + groups * len(columns) * 256
    labels = ds.samples_per_file * 8
    if ds.format == "npz":
        return payload + labels + 4096  # two .npy headers and the zip records: < 1 KiB
    chunks = hdf5_chunks(ds.samples_per_file, record, ds.hdf5_chunk_size)
    nchunks = 1 if chunks is None else -(-ds.samples_per_file // chunks[0]) * -(-record // chunks[1])
    slack = payload // 64 if ds.compression != "none" else 0  # random data grows a little
    return payload + labels + 65536 + 96 * nchunks + slack


@dataclass
class EncodedFile:
    """The bytes of one dataset file, ready to write."""

    index: int
    buffer: Any  # an aligned mmap (alignment > 1) or the encoder's own buffer
    size: int  # true file size
    padded: int  # bytes to write: size rounded up to the alignment
    encode_s: float = 0.0

    def view(self) -> memoryview:
        """The bytes to write (padded with zeros to the alignment)."""
        return memoryview(self.buffer)[: self.padded]


def encode(ds: Any, index: int, alignment: int = 1) -> EncodedFile:
    """Generate and encode file `index`; on direct I/O, padded to `alignment` in an aligned buffer."""
    record = record_size_of(ds, index)
    if ds.format == "raw":
        size = ds.samples_per_file * record
        padded = round_up(size, alignment) if alignment > 1 else size
        buf = aligned_buffer(padded)
        fill_random(memoryview(buf)[:size], file_seed(ds.seed, index, _CONTENT_STREAM))
        return EncodedFile(index, buf, size, padded)
    if ds.format == "npz":
        return _encode_npz(ds, index, record, alignment)
    if ds.format in ("jpeg", "tfrecord", "parquet"):
        return _encode_mlperf(ds, index, record, alignment)
    import h5py

    samples = file_samples(ds, index, record)
    out = io.BytesIO()
    compression = None if ds.compression == "none" else ds.compression
    chunks = hdf5_chunks(ds.samples_per_file, record, ds.hdf5_chunk_size)
    with h5py.File(out, "w") as h5:
        h5.create_dataset("records", data=samples, chunks=chunks if chunks or compression is None else True,
                          compression=compression)
        h5.create_dataset("labels", data=file_labels(ds, index))
    del samples
    return _aligned_copy(index, out.getbuffer(), alignment)


def _encode_mlperf(ds: Any, index: int, record: int, alignment: int) -> EncodedFile:
    """A JPEG, TFRecord or Parquet file (mlperf_formats), ready to write."""
    from mpibench import mlperf_formats as mf

    if ds.format == "jpeg":
        return _aligned_copy(index, memoryview(mf.encode_jpeg(ds.seed, index, record)), alignment)
    if ds.format == "parquet":
        return _aligned_copy(index, memoryview(mf.encode_parquet(ds, index)), alignment)
    size = mf.tfrecord_size(ds.samples_per_file, record)
    padded = round_up(size, alignment) if alignment > 1 else size
    buf = aligned_buffer(padded)
    mf.encode_tfrecord(file_samples(ds, index, record), buf)
    return EncodedFile(index, buf, size, padded)


def _aligned_copy(index: int, data: memoryview, alignment: int) -> EncodedFile:
    """Encoded bytes as they are (buffered I/O), or copied into an aligned, padded buffer."""
    size = len(data)
    if alignment <= 1:
        return EncodedFile(index, data, size, size)
    padded = round_up(size, alignment)
    buf = aligned_buffer(padded)
    buf[:size] = data
    return EncodedFile(index, buf, size, padded)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The .npy (version 1.0) header numpy writes for an array of this shape and dtype."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        out, {"shape": shape, "fortran_order": False, "descr": np.lib.format.dtype_to_descr(dtype)})
    return out.getvalue()


_ZIP_DATE = (1 << 5) | 1  # 1980-01-01, as numpy.savez's entries
_ZIP_VERSION = 20
_ZIP_ATTRS = 0o600 << 16


def _encode_npz(ds: Any, index: int, record: int, alignment: int) -> EncodedFile:
    """The npz file numpy.savez(x=records, y=labels) writes, built in place.

    An npz is a zip of stored (uncompressed) .npy members. Writing it directly into the
    aligned output buffer, with the records generated in place, saves the three copies
    savez and the alignment would make: generation then keeps up with fast storage.
    Files over 4 GiB (which need zip64 records) go through numpy.savez itself.
    """
    samples = ds.samples_per_file
    labels = file_labels(ds, index)
    members = [(b"x.npy", _npy_header((samples, record), np.dtype(np.uint8)), samples * record),
               (b"y.npy", _npy_header(labels.shape, labels.dtype), labels.nbytes)]
    size = sum(30 + len(name) + len(header) + nbytes for name, header, nbytes in members)
    directory_at = size
    size += sum(46 + len(name) for name, _, _ in members) + 22
    if size >= 0xFFFFFFFF:
        out = io.BytesIO()
        np.savez(out, x=file_samples(ds, index, record), y=labels)
        return _aligned_copy(index, out.getbuffer(), alignment)
    padded = round_up(size, alignment) if alignment > 1 else size
    buf = aligned_buffer(padded)
    view = memoryview(buf)
    offset = 0
    central = []
    for (name, header, nbytes), payload in zip(members, (None, labels), strict=True):
        data_at = offset + 30 + len(name) + len(header)
        body = view[data_at: data_at + nbytes]
        if payload is None:  # the records, generated where they will be written from
            fill_random(body, file_seed(ds.seed, index, _CONTENT_STREAM))
        else:
            body[:] = payload.tobytes()
        crc = zlib.crc32(body, zlib.crc32(header))
        length = len(header) + nbytes
        buf[offset: data_at - len(header)] = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, _ZIP_VERSION, 0, 0, 0, _ZIP_DATE, crc, length, length,
            len(name), 0) + name
        buf[data_at - len(header): data_at] = header
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | _ZIP_VERSION, _ZIP_VERSION,
                                   0, 0, 0, _ZIP_DATE, crc, length, length, len(name), 0, 0, 0, 0,
                                   _ZIP_ATTRS, offset) + name)
        offset = data_at + nbytes
    tail = b"".join(central)
    tail += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(tail), directory_at, 0)
    buf[offset: offset + len(tail)] = tail
    return EncodedFile(index, buf, size, padded)


class MemoryFile(io.RawIOBase):
    """A read-only file over bytes already in memory, without copying them first.

    io.BytesIO would copy the whole file before numpy or h5py copies it again; parsing
    from the read buffer directly keeps decoding as cheap as a data loader's.
    """

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        chunk = self._view[self._pos: self._pos + len(target)]
        target[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        data = bytes(self._view[self._pos: end])
        self._pos = max(self._pos, end)
        return data


# numpy parses each .npy header with ast.literal_eval, and CPython 3.11's AST constructor is
# not safe in two threads at once ("AST constructor recursion depth mismatch", CPython
# gh-106905): train's reader threads decode npz files one at a time.
_NPY_HEADER_LOCK = threading.Lock()


def verify_file_bytes(ds: Any, index: int, view: memoryview, path: str) -> None:
    """VerifyError unless `view` is byte for byte the file datagen writes for `index`
    (encoding is deterministic: the same seed gives the same bytes)."""
    expected = encode(ds, index, 1)
    want = memoryview(expected.buffer)[: expected.size]
    if len(view) == expected.size and view == want:
        return
    common = min(len(view), expected.size)
    differs = np.flatnonzero(np.frombuffer(view[:common], dtype=np.uint8)
                             != np.frombuffer(want[:common], dtype=np.uint8))
    if differs.size:
        raise VerifyError(f"data verification failed: {path} byte {int(differs[0])} differs from what datagen wrote",
                          "the storage returned wrong data, or the file was changed", path=path)
    raise VerifyError(f"data verification failed: {path} holds {len(view)} bytes, datagen wrote {expected.size}",
                      "the storage returned wrong data, or the file was changed", path=path)


def decode(ds: Any, index: int, data: memoryview | mmap.mmap, nbytes: int, path: str,
           *, verify: bool = False, sample_order: np.ndarray | None = None) -> int:
    """Parse a file read back as a training data loader would; return its sample count.

    The record shape must be the one the seed gives (else VerifyError naming the path);
    with `verify` every record is compared with the regenerated content. `sample_order`
    (shuffle=sample) is the order in which the records are taken from the file.
    """
    record = record_size_of(ds, index)
    want = (ds.samples_per_file, record)
    view = memoryview(data)[:nbytes]
    if verify:  # every byte datagen wrote (headers, labels, records), not only the records
        verify_file_bytes(ds, index, view, path)
    if ds.format == "jpeg":
        from mpibench import mlperf_formats as mf

        pixels = mf.decode_jpeg(MemoryFile(view), record, path)  # parsed from the read buffer, no copy
        int(pixels[:, 0, 0].sum())  # the decoded image, touched as a model's input would be
        if verify and bytes(view) != mf.encode_jpeg(ds.seed, index, record):
            raise VerifyError(f"data verification failed: {path} differs from what datagen wrote",
                              "the storage returned wrong data", path=path)
        return 1
    if ds.format == "tfrecord":
        from mpibench import mlperf_formats as mf

        records = mf.decode_tfrecord(view, want[0], record, path)
    elif ds.format == "raw":
        if nbytes != want[0] * want[1]:
            raise VerifyError(f"{path}: {nbytes} bytes, expected {want[0]} records of {record} bytes",
                              "the dataset was changed after datagen: generate it again", path=path)
        records = np.frombuffer(view, dtype=np.uint8).reshape(want)
    elif ds.format == "npz":
        try:
            with _NPY_HEADER_LOCK, np.load(MemoryFile(view), allow_pickle=False) as npz:
                records = npz["x"]
                labels = npz["y"]
        except Exception as exc:
            raise VerifyError(f"{path} is not a readable npz file: {exc}",
                              "the dataset is damaged: generate it again", path=path) from None
        if labels.shape != (want[0],):
            raise VerifyError(f"{path}: {labels.shape[0]} labels, expected {want[0]}", path=path)
    else:
        import h5py

        try:
            with h5py.File(MemoryFile(view), "r") as h5:
                records = h5["records"][()]
                labels = h5["labels"][()]
        except Exception as exc:
            raise VerifyError(f"{path} is not a readable hdf5 file: {exc}",
                              "the dataset is damaged: generate it again", path=path) from None
    if records.shape != want or records.dtype != np.uint8:
        raise VerifyError(f"{path}: records of shape {records.shape} ({records.dtype}), expected {want} uint8",
                          "the dataset was generated with other settings: generate it again", path=path)
    if sample_order is not None:
        records = records[sample_order]  # the gather a sample-shuffling loader does
    # Touch every record, as a model's input pipeline would (one byte per record is enough
    # once the bytes were parsed: npz and hdf5 decoding already copied all of them).
    int(records[:, 0].sum())
    if verify:
        expected = file_samples(ds, index, record)
        if sample_order is not None:
            expected = expected[sample_order]
        if not np.array_equal(records, expected):
            bad = int(np.flatnonzero((records != expected).any(axis=1))[0])
            raise VerifyError(f"data verification failed: {path} record {bad} differs from what datagen wrote",
                              "the storage returned wrong data", path=path)
    return want[0]


def manifest_of(ds: Any, *, complete: bool, total_bytes: int | None = None,
                run_id: str | None = None, created: float | None = None) -> dict[str, Any]:
    """The manifest describing a dataset (its config, and its size once complete)."""
    doc: dict[str, Any] = {"mpibench_dataset": MANIFEST_VERSION, "name": ds.name, "complete": complete}
    doc.update({key: getattr(ds, key) for key in manifest_keys(ds)})
    doc["total_files"] = ds.num_files
    doc["total_samples"] = ds.num_files * ds.samples_per_file
    doc["total_bytes"] = total_bytes
    doc["run_id"] = run_id
    doc["created"] = created
    return doc


def encode_manifest(doc: dict[str, Any], alignment: int) -> tuple[mmap.mmap, int, int]:
    """(aligned buffer, JSON bytes, bytes to write): the manifest padded for O_DIRECT."""
    text = json.dumps(doc, indent=1, sort_keys=True).encode("utf-8") + b"\n"
    padded = round_up(len(text), alignment) if alignment > 1 else len(text)
    buf = aligned_buffer(padded)
    buf[: len(text)] = text
    return buf, len(text), padded


def manifest_mismatch(found: dict[str, Any], ds: Any) -> list[str]:
    """'key=found (config says wanted)' for every dataset key that differs."""
    return [f"{key}={found.get(key)!r} (config says {getattr(ds, key)!r})"
            for key in manifest_keys(ds) if found.get(key) != getattr(ds, key)]


def manifest_keys(ds: Any) -> tuple[str, ...]:
    """The dataset keys a manifest records: the parquet ones only for parquet datasets."""
    return MANIFEST_KEYS + (PARQUET_KEYS if ds.format == "parquet" else ())


def check_dataset_name(name: str) -> None:
    """dataset.name must be a relative folder below storage.root, outside any run directory."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"dataset.name {name!r} is not a relative folder name",
                          "use e.g. dataset.name=unet3d (a folder below storage.root)")
    if parts[0].startswith(RUN_DIR_PREFIX):
        raise ConfigError(f"dataset.name {name!r} starts with {RUN_DIR_PREFIX!r}, the prefix of run directories",
                          "choose another name")


def key_exists(backend: Any, key: str) -> bool:
    """True when `key` (file or folder) exists; any failure to look counts as absent."""
    try:
        backend.size_of(key)
    except MpibenchError:
        return False
    return True
