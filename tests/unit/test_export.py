"""`tuner export` on a study of fake trials (no trial runs): tensor and sequence parallelism and the
workload knobs travel into the config, the notes and the provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from tuner.dsconfig import build_ds_config
from tuner.errors import SpaceError
from tuner.export import check_with_deepspeed, export
from tuner.points import Point

LLAMA = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256}  # fmt: skip


def study_of(
    point: Point, ranks: int = 4, lengths: list[int] | None = None, attrs: dict[str, Any] | None = None
) -> optuna.Study:
    """A study as `tuner search` records one, with `point` measured on `ranks` CPU ranks at global batch 16."""
    study = optuna.create_study(study_name="parallel", direction="maximize")
    space: dict[str, Any] = {
        "model": {"config": LLAMA, "attn_implementation": "sdpa", "peft": None},
        "data": {"sequence_length": lengths or 64},
        "training": {"global_batch_size": 16, "base_config": None},
        "hardware": {"gpus_per_trial": ranks},
        "search": {"seed": 0},
    }
    study.set_user_attr("space", space)
    study.set_user_attr("objectives", ["tokens_per_s"])
    study.set_user_attr("accelerator", "cpu")
    config = build_ds_config({}, point, global_batch=16, ranks=ranks, precision="fp32", accelerator="cpu")
    params = point.params()
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE, value=1000.0, params=params,
            distributions={k: CategoricalDistribution([v]) for k, v in params.items()},
            user_attrs={
                "point": point.label(), "tokens_per_s": 1000.0, "peak_mem_gb": 0.5, "ds_config": config,
                **(attrs or {}),
            },
        )
    )  # fmt: skip
    return study


def exported(tmp_path: Path, study: optuna.Study, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    done = export(study, "sqlite:///x.db", tmp_path / "ds_config.json", **kwargs)
    prov = json.loads(done.provenance_path.read_text())
    return json.loads(done.config_path.read_text()), prov, done.notes


def test_the_provenance_says_how_the_step_times_were_taken(tmp_path: Path) -> None:
    attrs = {"step_timing": "composed", "step_time_ci": 0.03, "step_time_s": 2.0}
    _, prov, _ = exported(tmp_path, study_of(Point(2, 1), attrs=attrs))
    assert prov["measured_with"]["step_timing"] == "composed"
    assert prov["figures"]["step_time_ci"] == 0.03


def test_a_tensor_parallel_winner_exports_its_section_layout_and_what_the_script_must_feed(tmp_path: Path) -> None:
    point = Point(2, 1, tensor_parallel_size=2, sequence_length=128, tiled_mlp=True)
    config, prov, notes = exported(tmp_path, study_of(point, lengths=[64, 128]), world_size=8)
    assert config["tensor_parallel"] == {"autotp_size": 2} and "sequence_parallel_size" not in config
    assert (config["gradient_accumulation_steps"], config["train_batch_size"]) == (2, 32)  # 16 samples, x tp
    check_with_deepspeed(config, 8)
    assert prov["measured_with"] == {
        "ranks": 4, "accelerator": "cpu", "sequence_length": 128, "tensor_parallel_size": 2,
        "sequence_parallel_size": 1, "data_parallel_size": 2, "zero_partition_ranks": 2, "deepspeed_world": 4,
        "step_timing": "whole",  # a trial recorded without step_timing timed whole steps
    }  # fmt: skip
    assert prov["parallelism"] == {
        "tensor_parallel_size": 2, "sequence_parallel_size": 1, "data_parallel_size": 4, "zero_partition_ranks": 4,
        "deepspeed_world": 8, "global_batch_size": 16,
    }  # fmt: skip
    assert prov["tiled_mlp"] is True and prov["tiled_logits"] is False and "TiledMLP" in prov["note"]
    assert any(n.startswith("the trials ran tiled_mlp: Tile the MLP") for n in notes)
    assert any("tensor_parallel_size 2 (AutoTP)" in n and "same batches" in n for n in notes)
    assert prov["notes"] == notes


def test_a_sequence_parallel_winner_tells_the_script_to_register_ulysses(tmp_path: Path) -> None:
    point = Point(2, 2, sequence_parallel_size=2)
    config, prov, notes = exported(tmp_path, study_of(point), world_size=8)
    assert config["sequence_parallel_size"] == 2 and "tensor_parallel" not in config
    assert (config["gradient_accumulation_steps"], config["train_batch_size"]) == (2, 16)  # over 8 / sp
    assert prov["parallelism"]["data_parallel_size"] == 4 and prov["parallelism"]["zero_partition_ranks"] == 8
    assert prov["measured_with"]["sequence_length"] == 64
    (ulysses,) = [n for n in notes if "Ulysses" in n]
    assert "register_with_transformers(" in ulysses and "seq_length=64" in ulysses and "micro_batch_size=2" in ulysses
    assert "core_attn_implementation='sdpa'" in ulysses and "mpu=mpu" in ulysses


def test_hf_format_hands_trainer_the_parallelism_config_and_its_batch(tmp_path: Path) -> None:
    config, prov, notes = exported(tmp_path, study_of(Point(2, 2, sequence_parallel_size=2)), world_size=8, fmt="hf")
    assert config["train_batch_size"] == 2 * 2 * 8  # as Trainer checks it; Accelerate rewrites it for DeepSpeed
    assert prov["hf_parallelism_config"]["dp_shard_size"] == 4 and prov["hf_parallelism_config"]["sp_size"] == 2
    assert "parallelism_config" not in prov["training_args"]  # an object: in the note and the provenance
    assert any("parallelism_config=ParallelismConfig(" in n for n in notes)
    _, prov, notes = exported(tmp_path, study_of(Point(2, 1, tensor_parallel_size=2)), fmt="hf")
    assert prov["hf_parallelism_config"] is None and any("tp_model_init" in n for n in notes)


def test_a_world_size_tp_and_sp_do_not_divide_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="--world-size: 6 ranks do not split into groups of tensor_parallel_size 1 x "
                       "sequence_parallel_size 4 = 4 ranks"):  # fmt: skip
        exported(tmp_path, study_of(Point(1, 1, sequence_parallel_size=4)), world_size=6)
    assert not list(tmp_path.iterdir())
