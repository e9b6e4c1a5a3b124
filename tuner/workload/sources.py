"""The local datasets a trial can train on, and how each is opened and read. Nothing is downloaded.

- Token files: `.bin` (raw token ids, uint16 as GPT-2's and nanoGPT's files, or uint32) and `.npy` (numpy's
  format, which carries its integer dtype; any shape, read flat) are memory-mapped: a trial touches only the
  windows it trains on, however large the file.
- Documents: JSONL (one JSON object per line), Parquet, or a folder `datasets.save_to_disk` wrote. A column
  (`data.field`; default `input_ids` when there is one, else `text`) holds each document's token ids or its
  text. They are read in order from a start position, around the end and back to it, only as far as the
  caller takes: Parquet by row groups, the datasets folder by slices (Arrow, memory-mapped), JSONL line by
  line from a byte offset (the start of the next line), so a large file is never read whole.

Every problem is a SpaceError naming the YAML key, so loading the space reports it on one line before anything
is written; the ranks read through the same code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuner.errors import SpaceError

SOURCE, FIELD, TOKENIZER = "data.source", "data.field", "data.tokenizer"
DOCUMENT_FILES = {".jsonl": "JSONL", ".parquet": "Parquet"}
FORMATS = (
    "a token file (.bin, .npy), a JSONL (.jsonl) or Parquet (.parquet) file, or a folder datasets' save_to_disk wrote"
)
CHUNK = 256  # rows read at a time from Parquet and datasets folders


def resolve(value: str, base_dir: Path) -> str:
    """A path from the space file as an absolute one (relative paths are relative to the space file's folder)."""
    path = Path(value).expanduser()
    return os.path.abspath(path if path.is_absolute() else base_dir / path)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def open_tokens(path: Path, dtype: str | None) -> Any:
    """The token file as a flat, read-only numpy array backed by the file (a memory map)."""
    import numpy as np

    size = path.stat().st_size
    if path.suffix.lower() == ".bin":
        kind = np.dtype(dtype or "uint16")
        if size % kind.itemsize:
            raise SpaceError(
                SOURCE,
                f"{path} holds {size} bytes, not a whole number of {kind.name} token ids ({kind.itemsize} bytes each);"
                " set data.dtype to the file's (uint16 or uint32)",
            )
        return np.memmap(path, dtype=kind, mode="r")
    with path.open("rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            raise SpaceError(SOURCE, f"{path} is not a .npy file (no NumPy header); raw token ids go in a .bin file")
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # numpy's refusal of a file that is not .npy, or holds Python objects
        raise SpaceError(SOURCE, f"{path} cannot be read as a .npy file: {_one_line(exc)}") from None
    if tokens.dtype.kind not in "iu":
        raise SpaceError(SOURCE, f"{path} holds {tokens.dtype}, not integer token ids")
    if tokens.size == 0:
        raise SpaceError(SOURCE, f"{path} holds no token ids (shape {tokens.shape})")
    return tokens.reshape(-1)


def column_kind(arrow_type: Any) -> str | None:
    """text for a string column, ids for a list of integers, None for anything else (an Arrow type)."""
    import pyarrow as pa

    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "text"
    listed = pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)
    if (listed or pa.types.is_fixed_size_list(arrow_type)) and pa.types.is_integer(arrow_type.value_type):
        return "ids"
    return None


def choose_field(columns: dict[str, str | None], field: str | None, where: str) -> tuple[str, str]:
    """The column to read and its kind (text or ids): `field` if given, else input_ids, else text."""
    names = ", ".join(columns) or "none"
    if field is not None:
        if field not in columns:
            raise SpaceError(FIELD, f"{where} has no {field!r} (it has: {names})")
        name = field
    else:
        found = [name for name in ("input_ids", "text") if name in columns]
        if not found:
            raise SpaceError(
                SOURCE, f"{where} has neither input_ids nor text (it has: {names}); name one with data.field"
            )
        name = found[0]
    kind = columns[name]
    if kind is None:
        raise SpaceError(FIELD if field else SOURCE, f"{where}: {name!r} holds neither text nor a list of token ids")
    return name, kind


class Documents:
    """A document source: `units` start positions (rows, or bytes for JSONL), the column and its kind."""

    path: Path
    field: str
    kind: str  # text or ids
    units: int

    def read(self, start: int) -> Iterator[tuple[int, Any]]:
        """(position, value) for every document once: from the one at `start` to the end, then from the first."""
        raise NotImplementedError

    def where(self, position: int) -> str:
        """A position in words, for an error message."""
        return f"{self.path} row {position}"


class JsonlDocuments(Documents):
    """JSON Lines: blank lines are skipped; a start is a byte offset, read from the next line's beginning."""

    def __init__(self, path: Path, field: str | None) -> None:
        self.path, self.units = path, path.stat().st_size
        first = next(self._lines(0, self.units), None)
        if first is None:
            raise SpaceError(SOURCE, f"{path} holds no records, only blank lines")
        record = self._parse(*first)
        columns = {key: self._kind(value) for key, value in record.items()}
        self.field, self.kind = choose_field(columns, field, f"the first record of {path}")

    @staticmethod
    def _kind(value: Any) -> str | None:
        if isinstance(value, str):
            return "text"
        if isinstance(value, list) and all(type(item) is int for item in value[:16]):
            return "ids"
        return None

    def _lines(self, begin: int, end: int) -> Iterator[tuple[int, bytes]]:
        """(offset, line) for the non-blank lines starting at or after `begin` and before `end`."""
        with self.path.open("rb") as handle:
            if begin > 0:
                handle.seek(begin - 1)
                handle.readline()  # the rest of the line `begin` falls in; a line starting at `begin` is kept
            offset = handle.tell()
            while offset < end:
                line = handle.readline()
                if not line:
                    return
                if line.strip():
                    yield offset, line
                offset += len(line)

    def _parse(self, offset: int, line: bytes) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise SpaceError(SOURCE, f"{self.where(offset)} is not JSON: {_one_line(exc)}") from None
        if not isinstance(record, dict):
            raise SpaceError(SOURCE, f"{self.where(offset)} is not a JSON object")
        return record

    def read(self, start: int) -> Iterator[tuple[int, Any]]:
        first = 0  # the offset of the line the pass begins with: the first at or after `start`
        if start > 0:
            with self.path.open("rb") as handle:
                handle.seek(start - 1)
                handle.readline()
                first = handle.tell()
        for begin, end in ((first, self.units), (0, first)):
            for offset, line in self._lines(begin, end):
                record = self._parse(offset, line)
                if self.field not in record:
                    raise SpaceError(FIELD, f"{self.where(offset)} has no {self.field!r}")
                yield offset, record[self.field]

    def where(self, position: int) -> str:
        with self.path.open("rb") as handle:  # only for an error: count the lines before it
            line = handle.read(position).count(b"\n") + 1
        return f"{self.path} line {line}"


class _TableDocuments(Documents):
    """Rows of an Arrow-typed table; subclasses read rows [begin, end) of the column in chunks."""

    def _setup(self, path: Path, schema: Any, rows: int, field: str | None, what: str) -> None:
        self.path, self.units = path, rows
        columns = {name: column_kind(schema.field(name).type) for name in schema.names}
        self.field, self.kind = choose_field(columns, field, f"{what} {path}")
        if rows == 0:
            raise SpaceError(SOURCE, f"{path} has no rows")

    def _chunks(self, begin: int, end: int) -> Iterator[list[Any]]:
        raise NotImplementedError

    def read(self, start: int) -> Iterator[tuple[int, Any]]:
        for begin, end in ((start, self.units), (0, start)):
            position = begin
            for values in self._chunks(begin, end):
                for value in values:
                    yield position, value
                    position += 1


class ParquetDocuments(_TableDocuments):
    def __init__(self, path: Path, field: str | None) -> None:
        import pyarrow.parquet as pq

        try:
            self.file = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow's refusal: not Parquet, truncated, empty
            raise SpaceError(SOURCE, f"{path} cannot be read as Parquet: {_one_line(exc)}") from None
        self._setup(path, self.file.schema_arrow, self.file.metadata.num_rows, field, "the Parquet file")

    def _chunks(self, begin: int, end: int) -> Iterator[list[Any]]:
        """Row groups from the one holding `begin`, rows before it skipped, until `end`."""
        metadata, first = self.file.metadata, 0
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            if first + rows > begin and first < end:
                for batch in self.file.iter_batches(batch_size=CHUNK, row_groups=[group], columns=[self.field]):
                    if first >= end:
                        return
                    low, high = max(begin - first, 0), min(end - first, batch.num_rows)
                    if low < high:  # rows before `begin` are skipped without turning them into Python objects
                        yield batch.column(0).slice(low, high - low).to_pylist()
                    first += batch.num_rows
            else:
                first += rows


class DatasetDocuments(_TableDocuments):
    """A folder datasets' save_to_disk wrote: a Dataset, or a DatasetDict whose train split is read."""

    def __init__(self, path: Path, field: str | None) -> None:
        if not (path / "state.json").is_file() and not (path / "dataset_dict.json").is_file():
            raise SpaceError(SOURCE, f"{path} is a folder but not one datasets' save_to_disk wrote (no state.json)")
        try:
            import datasets
        except ImportError:
            raise SpaceError(
                SOURCE, "a datasets folder needs the datasets package: pip install 'tuner[data]'"
            ) from None
        try:
            datasets.disable_progress_bars()  # bad input is one line; a trial's log needs no bars either
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:  # a folder save_to_disk did not finish, or a newer datasets wrote
            raise SpaceError(SOURCE, f"datasets cannot load {path}: {_one_line(exc)}") from None
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                splits = ", ".join(loaded)
                raise SpaceError(SOURCE, f"{path} holds the splits {splits}, no train: point to one split's folder")
            loaded = loaded["train"]
        self.dataset = loaded
        self._setup(path, loaded.data.schema, len(loaded), field, "the datasets folder")

    def _chunks(self, begin: int, end: int) -> Iterator[list[Any]]:
        column = self.dataset.select_columns([self.field])
        for low in range(begin, end, CHUNK):
            yield column[low : min(low + CHUNK, end)][self.field]


def open_documents(path: Path, field: str | None) -> Documents:
    """The document source at `path` (a JSONL or Parquet file, or a datasets folder)."""
    if path.is_dir():
        return DatasetDocuments(path, field)
    if path.suffix.lower() == ".parquet":
        return ParquetDocuments(path, field)
    return JsonlDocuments(path, field)


def source_kind(path: Path) -> str:
    """tokens or documents, for an existing path; an unknown format is the user's error."""
    if not path.exists():
        raise SpaceError(SOURCE, f"no such file or folder: {path}")
    suffix = path.suffix.lower()
    if path.is_dir():
        return "documents"
    if suffix not in (".bin", ".npy", *DOCUMENT_FILES):
        raise SpaceError(SOURCE, f"unknown format {path.name!r}; allowed: {FORMATS}")
    if path.stat().st_size == 0:
        raise SpaceError(SOURCE, f"{path} is empty")
    return "tokens" if suffix in (".bin", ".npy") else "documents"


def load_tokenizer(value: str) -> Any:
    """A local tokenizer, offline: a folder transformers saved (AutoTokenizer, local_files_only), or tokenizer.json.

    A tokenizer.json alone (a file, or the only tokenizer file in a folder) is the `tokenizers` library's own
    format: transformers wraps it as a fast tokenizer, without special-token names (the EOS then comes from
    the model config).
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    path = Path(value)
    if not path.exists():
        raise SpaceError(TOKENIZER, f"no such file or folder: {path} (a local tokenizer folder or tokenizer.json)")
    single = path if path.is_file() else path / "tokenizer.json"
    if path.is_dir() and not (path / "tokenizer_config.json").is_file() and not single.is_file():
        raise SpaceError(TOKENIZER, f"{path} holds neither tokenizer_config.json nor tokenizer.json")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        if path.is_dir() and (path / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        return PreTrainedTokenizerFast(tokenizer_file=str(single))
    except Exception as exc:  # whatever transformers refuses in the user's files
        raise SpaceError(TOKENIZER, f"transformers cannot load a tokenizer from {path}: {_one_line(exc)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
