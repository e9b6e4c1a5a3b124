"""The user's data in the built-in workload: each format read, packed or padded, and split over ranks, by hand.

Every file is tiny and written here; the tokenizer is a word-level one built with the `tokenizers` library
(tests/conftest.py), so every expected id is known: <eos> 1, <pad> 2, then the=3, a=4, cat=5, dog=6, sat=7,
ran=8, on=9, under=10, mat=11.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from tests.conftest import write_tokenizer
from tuner.errors import SpaceError
from tuner.result import TrialResult
from tuner.sections import DataSection
from tuner.space import load_space
from tuner.trial.spec import TrialSpec
from tuner.workload.data import _packed, _padded, check, open_data, step_batches, take
from tuner.workload.layout import synthetic_ids

EOS = 99  # the model config's, used when no tokenizer names one


def model(vocab: int = 128) -> dict[str, Any]:
    return {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": vocab,
            "eos_token_id": EOS}  # fmt: skip


def section(source: Path | str, seq: int, **over: Any) -> DataSection:
    return DataSection.model_validate({"sequence_length": seq, "source": str(source), **over})


def jsonl(path: Path, records: list[dict[str, Any]], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_a_uint16_bin_file_is_cut_into_windows_and_split_over_ranks(tmp_path: Path) -> None:
    tokens = (np.arange(48) * 7 % 128).astype(np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    opened = open_data(section(tmp_path / "train.bin", 4), model())
    assert isinstance(opened.tokens, np.memmap)  # read from the file on demand, never loaded whole
    ids, labels = take(opened, global_batch=12, seed=0, first=0, count=12)
    assert ids.dtype == np.int64 and ids.tolist() == tokens.reshape(12, 4).tolist()  # exactly one global batch
    assert labels is ids  # the model shifts the labels itself
    rank0, _ = take(opened, 12, 0, first=0, count=6)
    rank1, _ = take(opened, 12, 0, first=6, count=6)
    assert np.concatenate([rank0, rank1]).tolist() == ids.tolist()  # disjoint parts of the same global batch


def test_a_uint32_bin_file_starts_where_the_seed_says(tmp_path: Path) -> None:
    np.arange(1000, dtype=np.uint32).tofile(tmp_path / "train.bin")
    opened = open_data(section(tmp_path / "train.bin", 8, dtype="uint32"), model(vocab=1024))
    starts = set()
    for seed in (0, 1, 2):
        ids, _ = take(opened, global_batch=4, seed=seed, first=0, count=4)
        start = int(ids[0, 0])
        assert ids.ravel().tolist() == list(range(start, start + 32))  # consecutive windows of the file
        assert take(opened, 4, seed, 0, 4)[0].tolist() == ids.tolist()  # the same seed, the same batch
        starts.add(start)
    assert len(starts) == 3


def test_an_npy_file_carries_its_dtype_and_is_read_flat(tmp_path: Path) -> None:
    array = (np.arange(80, dtype=np.int32) % 50).reshape(10, 8)
    np.save(tmp_path / "train.npy", array)
    opened = open_data(section(tmp_path / "train.npy", 8), model())
    ids, _ = take(opened, global_batch=10, seed=3, first=0, count=10)
    assert ids.tolist() == array.tolist()


def test_jsonl_token_ids_are_packed_with_an_eos_after_each_document(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}, {"input_ids": [6, 7, 8, 9]}])
    opened = open_data(section(path, 4), model())
    assert opened.documents is not None and opened.documents.kind == "ids" and opened.eos == EOS
    windows = _packed(opened, start=0, first=0, count=3, global_batch=3)
    assert windows.tolist() == [[1, 2, 3, EOS], [4, 5, EOS, 6], [7, 8, 9, EOS]]
    assert _packed(opened, 0, first=1, count=2, global_batch=3).tolist() == windows[1:].tolist()  # rank 1 of 3
    # a start inside the second line reads from the third, around the end and back
    second = len(path.read_bytes().splitlines(keepends=True)[0])
    assert [v for _, v in opened.documents.read(second + 3)] == [[6, 7, 8, 9], [1, 2, 3], [4, 5]]
    assert [v for _, v in opened.documents.read(second)] == [[4, 5], [6, 7, 8, 9], [1, 2, 3]]  # a line's first byte


def test_jsonl_is_read_only_as_far_as_the_batch_needs(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"input_ids": [1, 2, 3, 4]}] * 3, tail="{broken\n")
    opened = open_data(section(path, 4), model())
    assert _packed(opened, start=0, first=0, count=2, global_batch=2).tolist() == [[1, 2, 3, 4], [EOS, 1, 2, 3]]
    with pytest.raises(SpaceError, match=r"data.source: .*d.jsonl line 4 is not JSON"):
        _packed(opened, start=0, first=0, count=4, global_batch=4)


def test_without_packing_each_document_is_one_padded_sample_with_masked_labels(tmp_path: Path) -> None:
    docs = [{"input_ids": [1, 2, 3, 4, 5, 6]}, {"input_ids": [7]}, {"input_ids": []}, {"input_ids": [8, 9]}]
    opened = open_data(section(jsonl(tmp_path / "d.jsonl", docs), 4, packing=False), model())
    ids, labels = _padded(opened, start=0, first=0, count=2, global_batch=2)
    assert ids.tolist() == [[1, 2, 3, 4], [8, 9, EOS, EOS]]  # truncated; too short to predict anything: skipped
    assert labels.tolist() == [[1, 2, 3, 4], [8, 9, -100, -100]]
    with pytest.raises(SpaceError, match=r"holds 2 document\(s\) of 2 tokens or more; one global batch needs 3"):
        _padded(opened, start=0, first=0, count=3, global_batch=3)


def test_jsonl_text_is_tokenized_with_the_local_tokenizer(tmp_path: Path, tokenizer: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"text": "the cat sat", "id": 1}, {"text": "a dog ran on the mat", "id": 2}])
    opened = open_data(section(path, 5, tokenizer=str(tokenizer)), model())
    assert opened.documents is not None and opened.documents.field == "text" and (opened.eos, opened.pad) == (1, 2)
    assert _packed(opened, 0, 0, 2, 2).tolist() == [[3, 5, 7, 1, 4], [6, 8, 9, 3, 11]]
    padded = open_data(section(path, 5, tokenizer=str(tokenizer), packing=False), model())
    ids, labels = _padded(padded, 0, 0, 2, 2)
    assert ids.tolist() == [[3, 5, 7, 2, 2], [4, 6, 8, 9, 3]]
    assert labels.tolist() == [[3, 5, 7, -100, -100], [4, 6, 8, 9, 3]]


def test_parquet_reads_its_row_groups_from_any_row(tmp_path: Path, tokenizer: Path) -> None:
    rows = [[1, 2], [3, 4, 5], [6], [7, 8], [9, 10, 11]]
    table = pa.table({"text": ["the cat", "a dog", "on", "the mat", "sat"], "input_ids": rows})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=2)
    opened = open_data(section(tmp_path / "d.parquet", 3), model())
    assert opened.documents is not None and opened.documents.field == "input_ids"  # preferred over text
    assert [(p, v) for p, v in opened.documents.read(3)] == [(3, [7, 8]), (4, [9, 10, 11]), (0, [1, 2]),
                                                              (1, [3, 4, 5]), (2, [6])]  # fmt: skip
    assert _packed(opened, 0, 0, 3, 3).tolist() == [[1, 2, EOS], [3, 4, 5], [EOS, 6, EOS]]
    text = open_data(section(tmp_path / "d.parquet", 3, field="text", tokenizer=str(tokenizer)), model())
    assert _packed(text, 0, 0, 2, 2).tolist() == [[3, 5, 1], [4, 6, 1]]


def test_a_datasets_folder_is_read_like_a_table(tmp_path: Path, tokenizer: Path) -> None:
    datasets = pytest.importorskip("datasets")
    train = datasets.Dataset.from_dict({"text": ["the cat sat", "a dog", "on the mat"]})
    train.save_to_disk(str(tmp_path / "ds"))
    opened = open_data(section(tmp_path / "ds", 4, tokenizer=str(tokenizer)), model())
    assert opened.documents is not None and opened.documents.units == 3
    assert _packed(opened, 0, 0, 2, 2).tolist() == [[3, 5, 7, 1], [4, 6, 1, 9]]
    assert [v for _, v in opened.documents.read(2)] == ["on the mat", "the cat sat", "a dog"]
    datasets.DatasetDict({"train": train, "test": train.select([0])}).save_to_disk(str(tmp_path / "dd"))
    assert open_data(section(tmp_path / "dd", 4, tokenizer=str(tokenizer)), model()).documents.units == 3
    datasets.DatasetDict({"test": train}).save_to_disk(str(tmp_path / "test_only"))
    with pytest.raises(SpaceError, match="holds the splits test, no train: point to one split's folder"):
        open_data(section(tmp_path / "test_only", 4, tokenizer=str(tokenizer)), model())


def test_a_datasets_folder_without_the_datasets_package_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed: the import raises ImportError
    with pytest.raises(SpaceError, match=r"^data.source: a datasets folder needs the datasets package: pip install "):
        open_data(section(tmp_path / "ds", 4), model())


def spec(data: dict[str, Any], *, micro: int = 2, accum: int = 3, global_batch: int = 12, seq: int = 4) -> TrialSpec:
    return TrialSpec(
        model_config=model(), sequence_length=seq, micro_batch_size=micro, grad_accum=accum,
        activation_checkpointing=False, global_batch_size=global_batch, precision="fp32", ds_config={}, data=data,
    )  # fmt: skip


def test_each_rank_gets_its_own_part_of_the_global_batch_as_micro_batches_on_its_device(tmp_path: Path) -> None:
    (np.arange(100) % 128).astype(np.uint16).tofile(tmp_path / "t.bin")
    trial = spec({"source": str(tmp_path / "t.bin")})
    device = torch.device("cpu")
    parts = [step_batches(trial, rank, 2, 128, device) for rank in (0, 1)]
    for batches in parts:
        assert len(batches) == 3  # one per accumulation micro-step
        for batch in batches:
            assert batch["input_ids"].shape == (2, 4) and batch["input_ids"].device == device
            assert batch["labels"] is batch["input_ids"]
    seen = torch.cat([b["input_ids"] for batches in parts for b in batches])
    whole, _ = take(open_data(section(tmp_path / "t.bin", 4), model()), 12, 0, 0, 12)
    assert seen.tolist() == whole.tolist()  # rank 0's six samples, then rank 1's: the global batch, no overlap


def test_padded_micro_batches_carry_their_masked_labels(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"input_ids": [5, 6, 7]}] * 4)
    (batch,) = step_batches(spec({"source": str(path), "packing": False}, micro=2, accum=1, global_batch=4), 1, 2,
                            128, torch.device("cpu"))  # fmt: skip
    assert batch["input_ids"].tolist() == [[5, 6, 7, EOS]] * 2 and batch["labels"].tolist() == [[5, 6, 7, -100]] * 2


def test_synthetic_data_is_numbered_by_sample_whatever_the_layout() -> None:
    cpu = torch.device("cpu")
    dp_only = [b["input_ids"] for rank in (0, 1) for b in step_batches(spec({}), rank, 2, 128, cpu)]
    one_rank = [b["input_ids"] for b in step_batches(spec({}, micro=4, accum=3), 0, 1, 128, cpu)]
    assert torch.cat(dp_only).tolist() == torch.cat(one_rank).tolist()  # the same 12 samples, in order
    assert torch.cat(dp_only).tolist() == synthetic_ids(0, 128, 0, 12, 4).tolist()
    assert len({tuple(row) for row in torch.cat(dp_only).tolist()}) == 12  # no sample repeated


@pytest.mark.parametrize("source", ["synthetic", "tokens"])
def test_a_tensor_parallel_group_shares_its_samples_and_the_global_batch_is_that_of_dp_only(
    source: str, tmp_path: Path
) -> None:
    (np.arange(400) % 128).astype(np.uint16).tofile(tmp_path / "t.bin")
    data = {} if source == "synthetic" else {"source": str(tmp_path / "t.bin")}
    cpu = torch.device("cpu")
    dp_only = [b["input_ids"] for r in range(4) for b in step_batches(spec(data, micro=1, accum=3), r, 4, 128, cpu)]
    tp2 = spec(data, micro=1, accum=6).replace(point={"tensor_parallel_size": 2})
    ranks = [torch.cat([b["input_ids"] for b in step_batches(tp2, r, 4, 128, cpu)]) for r in range(4)]
    assert ranks[0].tolist() == ranks[1].tolist() and ranks[2].tolist() == ranks[3].tolist()
    assert torch.cat([ranks[0], ranks[2]]).tolist() == torch.cat(dp_only).tolist()


def test_a_ulysses_group_slices_each_sample_with_labels_shifted_before_slicing(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"input_ids": [5, 6, 7]}] * 4)
    sp2 = spec({"source": str(path), "packing": False}, micro=2, accum=1, global_batch=2).replace(
        point={"sequence_parallel_size": 2}
    )
    first, second = (step_batches(sp2, r, 2, 128, torch.device("cpu"))[0] for r in (0, 1))
    assert set(first) == {"input_ids", "shift_labels", "position_ids"}
    assert first["input_ids"].tolist() == [[5, 6]] * 2 and second["input_ids"].tolist() == [[7, EOS]] * 2
    assert first["shift_labels"].tolist() == [[6, 7]] * 2 and second["shift_labels"].tolist() == [[-100, -100]] * 2
    assert first["position_ids"].tolist() == [[0, 1]] * 2 and second["position_ids"].tolist() == [[2, 3]] * 2


def test_load_space_resolves_the_paths_reads_the_batch_and_records_the_source(tmp_path: Path, tokenizer: Path) -> None:
    (tmp_path / "data").mkdir()
    jsonl(tmp_path / "data" / "docs.jsonl", [{"text": "the cat sat on the mat and then ran"}] * 10)
    raw = {
        "model": {"config": model()},
        "data": {"sequence_length": 8, "source": "data/docs.jsonl", "tokenizer": str(tokenizer)},
        "training": {"global_batch_size": 4},
        "space": {"micro_batch_size": [1, 2]},
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    space = load_space(tmp_path / "space.yaml")
    assert space.data.source == str(tmp_path / "data" / "docs.jsonl") and space.data.field == "text"
    assert check(space.data, model(), 4, 0) == space.data  # what load_space recorded reads the same again
    from tuner.points import Point

    trial = TrialSpec.build(space, Point(2, 0), {})
    assert trial.data["source"] == space.data.source and trial.data["packing"] is True
    assert TrialResult({"tokens_per_s": 1.0}, spec=trial).user_attrs()["data_source"] == space.data.source
    synthetic = TrialSpec.build(space.model_copy(update={"data": DataSection(sequence_length=8)}), Point(2, 0), {})
    assert TrialResult({"tokens_per_s": 1.0}, spec=synthetic).user_attrs()["data_source"] == "synthetic"
