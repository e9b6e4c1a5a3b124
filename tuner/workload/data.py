"""Where a trial's tokens come from: random ids, or one global batch of the user's local dataset.

Every trial of a space trains on the same global batch: a stretch of the dataset that begins where the
search's seed puts it, cut into global_batch_size samples of sequence_length tokens; data-parallel rank d of D takes
the d-th of D equal parts (tuner.workload.layout: the ranks of a tensor- or sequence-parallel group share theirs),
so data-parallel ranks see different data and two trials' losses are comparable. Random ids are numbered
the same way: sample i is the same whichever rank takes it. A rank reads
only its part (of documents: up to the end of its part, tokenizing text as it goes), makes its micro-batches
on its device before any step is timed and reuses them every step, as for random ids (tuner/trial/measure.py:
no host copy inside the clock), so throughput means the same for every source. `check` runs the same reading
over the whole global batch when the space is loaded: bad data is one line naming the key, before anything is
written.

Samples. With packing (the default) documents are joined with an EOS after each (the tokenizer's, else the
model config's eos_token_id; nothing where neither has one) and cut into sequence_length windows; the labels
are the inputs (the model shifts them). Without, each document of 2 tokens or more (one next-token prediction)
is one sample: its first sequence_length tokens, padded at the right, labels -100 on the padding. No attention
mask: under the causal mask no real token attends to the padding at its right, so the loss is the same without
one, and the shapes and the attention kernel are those of packed data. Token files are one stream, always
packed. The shapes never depend on the source, so neither does `tuner plan` or the memory model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import SpaceError
from tuner.sections import DataSection
from tuner.workload.layout import IGNORE, Layout, sequence_slice, synthetic_ids
from tuner.workload.sources import (
    FIELD,
    SOURCE,
    TOKENIZER,
    Documents,
    load_tokenizer,
    open_documents,
    open_tokens,
    resolve,
    source_kind,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tuner.trial.spec import TrialSpec


def resolve_paths(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The space's `data:` mapping with data.source and data.tokenizer relative to the space file made absolute."""
    out = dict(data)
    source = out.get("source")
    if isinstance(source, str) and source not in ("synthetic", ""):
        out["source"] = resolve(source, base_dir)
    if isinstance(out.get("tokenizer"), str) and out["tokenizer"]:
        out["tokenizer"] = resolve(out["tokenizer"], base_dir)
    return out


@dataclass(frozen=True)
class Opened:
    """A local dataset ready to read: a memory-mapped token file, or documents (and their tokenizer)."""

    section: DataSection
    vocab: int
    tokens: Any = None
    documents: Documents | None = None
    tokenizer: Any = None
    eos: int | None = None
    pad: int = 0

    @property
    def path(self) -> Path:
        return Path(self.section.source)

    @property
    def id_key(self) -> str:
        """The key to name for a token id the model cannot take: the tokenizer made it, or the data holds it."""
        return TOKENIZER if self.documents is not None and self.documents.kind == "text" else SOURCE


def _first_id(*candidates: Any, vocab: int | None = None) -> int | None:
    """The first candidate that is a token id (the first of a list, as Llama 3's eos_token_id), within `vocab`."""
    for value in candidates:
        value = value[0] if isinstance(value, (list, tuple)) and value else value
        if isinstance(value, int) and not isinstance(value, bool) and (vocab is None or 0 <= value < vocab):
            return value
    return None


def open_data(section: DataSection, model_config: dict[str, Any], vocab: int | None = None) -> Opened:
    """Open `section.source` (an absolute path) for a model of `model_config` (its vocab_size unless given)."""
    from tuner.workload.hf_causal_lm import build_config

    config = build_config(model_config)
    vocab = vocab if vocab is not None else int(config.vocab_size)
    path = Path(section.source)
    if source_kind(path) == "tokens":
        return Opened(section, vocab, tokens=open_tokens(path, section.dtype))
    documents = open_documents(path, section.field)
    tokenizer = load_tokenizer(section.tokenizer) if section.tokenizer is not None else None
    if tokenizer is None and documents.kind == "text":
        raise SpaceError(
            TOKENIZER,
            f"required: {documents.field!r} in {path} holds text; give a local tokenizer folder or tokenizer.json",
        )
    eos = _first_id(getattr(tokenizer, "eos_token_id", None), config.eos_token_id)
    pad = _first_id(getattr(tokenizer, "pad_token_id", None), eos, 0, vocab=vocab) or 0
    return Opened(section, vocab, documents=documents, tokenizer=tokenizer, eos=eos, pad=pad)


def _encode(opened: Opened, position: int, value: Any, truncate: bool) -> np.ndarray:
    """One document's token ids (int64); empty for a missing value."""
    import numpy as np

    docs = opened.documents
    assert docs is not None
    if value is None:
        return np.zeros(0, dtype=np.int64)
    key = FIELD if opened.section.field else SOURCE
    if docs.kind == "text":
        if not isinstance(value, str):
            raise SpaceError(key, f"{docs.where(position)}: {docs.field!r} is not text like the first record's")
        seq = _length(opened.section)
        encoded = opened.tokenizer(value, truncation=True, max_length=seq) if truncate else opened.tokenizer(value)
        return np.asarray(encoded["input_ids"], dtype=np.int64)
    ids = np.asarray(value)
    if not isinstance(value, list) or (ids.size and (ids.ndim != 1 or ids.dtype.kind not in "iu")):
        raise SpaceError(key, f"{docs.where(position)}: {docs.field!r} is not a list of integer token ids")
    return ids.astype(np.int64)


def _packed(opened: Opened, start: int, first: int, count: int, global_batch: int) -> np.ndarray:
    """Windows [first, first + count) of the documents from `start`, joined with an EOS after each."""
    import numpy as np

    docs, seq, eos = opened.documents, _length(opened.section), opened.eos
    assert docs is not None
    end, pieces, held = (first + count) * seq, [], 0
    for position, value in docs.read(start):
        ids = _encode(opened, position, value, truncate=False)
        if not ids.size:
            continue
        if eos is not None and ids[-1] != eos:
            ids = np.append(ids, eos)
        pieces.append(ids)
        held += ids.size
        if held >= end:
            return np.concatenate(pieces)[first * seq : end].reshape(count, seq)
    joined = "each followed by an EOS" if eos is not None else "joined (no EOS id known)"
    raise SpaceError(
        SOURCE,
        f"{opened.path} holds {held} tokens (its documents, {joined}); one global batch needs {global_batch * seq} "
        f"(global_batch_size {global_batch} x sequence_length {seq})",
    )


def _padded(opened: Opened, start: int, first: int, count: int, global_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples [first, first + count): one per document of 2 tokens or more, truncated, padded, labels masked."""
    import numpy as np

    docs, seq = opened.documents, _length(opened.section)
    assert docs is not None
    rows: list[np.ndarray] = []
    usable = 0
    for position, value in docs.read(start):
        ids = _encode(opened, position, value, truncate=True)[:seq]
        if ids.size < 2:
            continue  # no next token to predict
        usable += 1
        if usable > first:
            rows.append(ids)
            if len(rows) == count:
                ids_out = np.full((count, seq), opened.pad, dtype=np.int64)
                labels = np.full((count, seq), IGNORE, dtype=np.int64)
                for row, doc in enumerate(rows):
                    ids_out[row, : doc.size] = doc
                    labels[row, : doc.size] = doc
                return ids_out, labels
    raise SpaceError(
        SOURCE,
        f"{opened.path} holds {usable} document(s) of 2 tokens or more; one global batch needs {global_batch} "
        "with data.packing false (one sample per document)",
    )


def take(opened: Opened, global_batch: int, seed: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples [first, first + count) of the global batch `seed` picks: token ids and labels, (count, seq) int64.

    For packed data the labels are the ids themselves (the same array).
    """
    import numpy as np

    seq = _length(opened.section)
    rng = np.random.default_rng(seed)
    if opened.tokens is not None:
        total, need = int(opened.tokens.size), global_batch * seq
        if total < need:
            raise SpaceError(
                SOURCE,
                f"{opened.path} holds {total} tokens; one global batch needs {need} "
                f"(global_batch_size {global_batch} x sequence_length {seq})",
            )
        begin = int(rng.integers(0, total - need + 1)) + first * seq
        ids = np.asarray(opened.tokens[begin : begin + count * seq], dtype=np.int64).reshape(count, seq)
        labels = ids
    else:
        assert opened.documents is not None
        start = int(rng.integers(0, opened.documents.units))
        if opened.section.packing:
            ids = labels = _packed(opened, start, first, count, global_batch)
        else:
            ids, labels = _padded(opened, start, first, count, global_batch)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= opened.vocab:
        made = "the tokenizer encodes" if opened.id_key == TOKENIZER else "holds"
        raise SpaceError(
            opened.id_key,
            f"{opened.path}: {made} token id {low if low < 0 else high}, outside the model's vocabulary "
            f"(model.config vocab_size {opened.vocab}: ids 0 to {opened.vocab - 1})",
        )
    return ids, labels


def _length(section: DataSection) -> int:
    """The sequence length: the built-in workload always has one (tuner.space checks it)."""
    assert section.sequence_length is not None, "the built-in workload has a sequence length"
    length = section.sequence_length  # several (a searched knob): the data is checked at the longest
    return max(length) if isinstance(length, list) else length


def check(section: DataSection, model_config: dict[str, Any], global_batch: int, seed: int) -> DataSection:
    """Read the global batch every trial will train on, as the ranks will; the section with its column named.

    Raises SpaceError for a missing path, an unknown format, an empty file, no usable column, a tokenizer that
    does not load, too few tokens or documents, or a token id the model's vocabulary does not hold.
    """
    if section.synthetic:
        return section
    opened = open_data(section, model_config)
    take(opened, global_batch, seed, 0, global_batch)
    if opened.documents is None:
        return section
    return section.model_copy(update={"field": opened.documents.field})


def step_batches(spec: TrialSpec, rank: int, world: int, vocab: int, device: torch.device) -> list[dict[str, Any]]:
    """This rank's micro-batches of one optimizer step, on `device`, made once before any timing.

    Its samples are those of its data-parallel index (tuner.workload.layout): the ranks of a tensor-parallel group
    get the same ones, the ranks of a Ulysses group each its slice of them.
    """
    import torch

    section = DataSection.model_validate({"sequence_length": spec.sequence_length, **spec.data})
    micro, accum = spec.micro_batch_size, spec.grad_accum
    layout = Layout.of(spec.point, rank, world)
    count = micro * accum
    assert count * layout.dp == spec.global_batch_size, "the data-parallel ranks' parts make up the global batch"
    first = layout.first_sample(count)
    if section.synthetic:
        ids = labels = synthetic_ids(spec.seed, vocab, first, count, _length(section))
    else:
        ids, labels = take(
            open_data(section, spec.model_config, vocab), spec.global_batch_size, spec.seed, first, count
        )
    batches = []
    for step in range(accum):
        part = slice(step * micro, (step + 1) * micro)
        input_ids = torch.from_numpy(ids[part]).to(device)
        target = input_ids if labels is ids else torch.from_numpy(labels[part]).to(device)
        batch = {"input_ids": input_ids, "labels": target}
        batches.append(sequence_slice(batch, layout.sp, layout.sp_rank) if layout.sp > 1 else batch)
    return batches
