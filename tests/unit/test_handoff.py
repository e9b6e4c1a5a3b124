"""Reshaping the measured config for the production job (pure): world size, Hugging Face Trainer."""

from __future__ import annotations

import pytest

from tuner.dsconfig import build_ds_config
from tuner.errors import SpaceError
from tuner.handoff import for_world_size, hf_config, hf_training_args, training_args_code, world_sizes_that_divide
from tuner.points import Point

BASE = {
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 100}},
    "gradient_clipping": 1.0,
}


def measured(point: Point, ranks: int = 8, global_batch: int = 512, precision: str = "bf16") -> dict:
    return build_ds_config(BASE, point, global_batch=global_batch, ranks=ranks, precision=precision, accelerator="cuda")


def test_more_ranks_recompute_accumulation_and_say_memory_only_falls() -> None:
    config = measured(Point(4, 3))  # 512 = 4 x 16 x 8
    assert config["gradient_accumulation_steps"] == 16
    wider, notes = for_world_size(config, 32, measured_ranks=8)
    assert wider["gradient_accumulation_steps"] == 4 and wider["train_batch_size"] == 512
    assert wider["train_micro_batch_size_per_gpu"] == 4 and config["gradient_accumulation_steps"] == 16
    assert any("memory per device only falls" in n for n in notes)
    narrower, notes = for_world_size(config, 2, measured_ranks=8)
    assert narrower["gradient_accumulation_steps"] == 64
    assert any("memory per device rises" in n for n in notes)
    same, notes = for_world_size(config, 8, measured_ranks=8)
    assert same == config and notes == []
    _, notes = for_world_size(measured(Point(4, 0)), 32, measured_ranks=8)  # stage 0 replicates: no ZeRO note
    assert not any("ZeRO" in n for n in notes)


def test_a_world_size_that_cannot_keep_the_global_batch_is_an_error_naming_the_ones_that_can() -> None:
    config = measured(Point(4, 2))
    with pytest.raises(SpaceError, match=r"--world-size.*does not divide the global batch 512.*1, 2, 4, 8, 16, 32"):
        for_world_size(config, 3, measured_ranks=8)
    with pytest.raises(SpaceError, match="--world-size: must be at least 1"):
        for_world_size(config, 0, measured_ranks=8)
    assert world_sizes_that_divide(24, 4) == [1, 2, 3, 6]
    assert world_sizes_that_divide(24, 5) == []


def test_hf_arguments_match_every_value_trainer_checks() -> None:
    config, notes = hf_config(measured(Point(2, 2, activation_checkpointing=True)), 8)
    assert "scheduler" not in config and any("lr_scheduler_type" in n for n in notes)
    args = hf_training_args(config, "ds.json")
    assert args == {
        "deepspeed": "ds.json",
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 32,
        "gradient_checkpointing": True,
        "bf16": True,
        "fp16": False,
        "learning_rate": 3e-4,
        "adam_beta1": 0.9,
        "adam_beta2": 0.95,
        "adam_epsilon": 1e-8,
        "weight_decay": 0.1,
        "max_grad_norm": 1.0,
    }
    assert "auto" not in str(config)
    code = training_args_code(args)
    assert code.startswith("TrainingArguments(") and "per_device_train_batch_size=2," in code
    fp16 = hf_training_args(measured(Point(2, 0), precision="fp16"), "x.json")
    assert fp16["fp16"] is True and fp16["bf16"] is False and fp16["gradient_checkpointing"] is False


def test_lora_settings_travel_as_peft_arguments_and_print_as_the_wrapping() -> None:
    from tuner.export import model_options
    from tuner.handoff import lora_config_code

    peft = {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
    options = model_options({"config": {"model_type": "llama"}, "peft": peft, "attn_implementation": "eager"})
    kwargs = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "task_type": "CAUSAL_LM",
              "target_modules": ["q_proj", "v_proj"]}  # fmt: skip
    assert options == {"attn_implementation": "eager", "peft": peft, "lora_config": kwargs}
    from peft import LoraConfig

    LoraConfig(**options["lora_config"])  # peft takes them as they are
    code = lora_config_code(kwargs)
    assert code.startswith("from peft import LoraConfig, get_peft_model\n\nmodel = get_peft_model(model, LoraConfig(")
    assert "    lora_alpha=32," in code
    assert model_options({"config": {}}) == {"attn_implementation": None, "peft": None, "lora_config": None}


# Tensor and sequence parallelism: DeepSpeed counts train_batch_size over all ranks under AutoTP (its
# tensor-parallel ranks see the same samples) and over ranks / sp under Ulysses (tuner.parallel).
TP2, SP2 = {"tensor_parallel_size": 2}, {"sequence_parallel_size": 2}


def test_another_world_size_keeps_tp_and_sp_and_recomputes_the_data_parallel_ranks() -> None:
    from tuner.export import check_with_deepspeed

    autotp = measured(Point(4, 1, **TP2))  # 8 ranks: 4 data-parallel, 512 = 4 x 32 x 4
    assert (autotp["gradient_accumulation_steps"], autotp["train_batch_size"]) == (32, 1024)
    wider, notes = for_world_size(autotp, 16, measured_ranks=8)
    assert wider["tensor_parallel"] == {"autotp_size": 2} and "sequence_parallel_size" not in wider
    assert (wider["gradient_accumulation_steps"], wider["train_batch_size"]) == (16, 1024)  # 4 x 16 x all 16 ranks
    assert any("over 8 data-parallel ranks (tensor_parallel_size 2 and sequence_parallel_size 1 kept)" in n
               for n in notes)  # fmt: skip
    assert any("partitions over 8 ranks instead of 4" in n for n in notes)  # ZeRO: the data-parallel group
    check_with_deepspeed(wider, 16)

    ulysses = measured(Point(4, 1, **SP2))  # 8 ranks: 4 data-parallel, DeepSpeed's world 8 / 2
    assert (ulysses["gradient_accumulation_steps"], ulysses["train_batch_size"]) == (32, 512)
    wider, notes = for_world_size(ulysses, 16, measured_ranks=8)
    assert wider["sequence_parallel_size"] == 2 and "tensor_parallel" not in wider
    assert (wider["gradient_accumulation_steps"], wider["train_batch_size"]) == (16, 512)  # 4 x 16 x 16 / 2
    assert any("partitions over 16 ranks instead of 8" in n for n in notes)  # ZeRO: the sequence x data group
    check_with_deepspeed(wider, 16)
    narrower, _ = for_world_size(ulysses, 2, measured_ranks=8)  # one data-parallel rank
    assert (narrower["gradient_accumulation_steps"], narrower["train_batch_size"]) == (128, 512)


def test_a_world_size_that_tp_and_sp_do_not_divide_is_an_error_naming_the_ones_that_do() -> None:
    with pytest.raises(SpaceError) as odd:
        for_world_size(measured(Point(4, 1, **TP2)), 5, measured_ranks=8)
    assert str(odd.value) == (
        "--world-size: 5 ranks do not split into groups of tensor_parallel_size 2 x sequence_parallel_size 1 = 2 "
        "ranks; world sizes that do and keep the global batch 512: 2, 4, 8, 16, 32, 64"
    )
    with pytest.raises(SpaceError, match=r"--world-size: 3 data-parallel ranks \(6 / 2\) x micro-batch 4 does not"):
        for_world_size(measured(Point(4, 1, **SP2)), 6, measured_ranks=8)
    assert world_sizes_that_divide(24, 4, upto=16, group=4) == [4, 8, 12]


def test_the_deepspeed_check_counts_the_world_as_deepspeed_does() -> None:
    """DeepSpeed's own parser, over a stand-in group of the job's ranks, agrees with tuner.parallel."""
    from tuner.export import check_with_deepspeed

    for point in (Point(2, 1), Point(2, 1, **TP2), Point(2, 2, **SP2)):
        check_with_deepspeed(measured(point, ranks=4, global_batch=16), 4)
    wrong = {**measured(Point(2, 1, **TP2), ranks=4, global_batch=16), "train_batch_size": 16}  # not x tp
    with pytest.raises(ValueError, match=r"train_batch_size 16 != micro 2 x accumulation 4 x 4 ranks"):
        check_with_deepspeed(wrong, 4)
    with pytest.raises(ValueError, match=r"x 4 ranks \(DeepSpeed's world: 8 / sp\)"):
        check_with_deepspeed(measured(Point(2, 1, **SP2), ranks=4, global_batch=16), 8)
    with pytest.raises(ValueError, match="not a multiple of tensor_parallel_size 2"):
        check_with_deepspeed(measured(Point(2, 1, **TP2), ranks=4, global_batch=16), 3)
    bad_section = {**measured(Point(2, 1, **TP2), ranks=4, global_batch=16), "tensor_parallel": {"autotp": 2}}
    with pytest.raises(Exception, match="autotp"):  # DeepSpeed's parser checks the section's keys
        check_with_deepspeed(bad_section, 4)


def test_a_deepspeed_script_is_told_what_tp_and_sp_need_of_it() -> None:
    from tuner.handoff import script_parallel

    assert script_parallel({}, 8, 4, 4096, None) == []
    (tp,) = script_parallel(TP2, 8, 4, 4096, None)
    assert "same batches" in tp and "rank // 2" in tp and "num_replicas=4" in tp and "Data inconsistency" in tp
    (sp,) = script_parallel(SP2, 8, 4, 4096, "flash_attention_2")
    for part in (
        "UlyssesSPAttentionHF.register_with_transformers(model_name_or_path=model, "
        "core_attn_implementation='flash_attention_2', sequence_parallel_size=2, micro_batch_size=4, "
        "seq_length=4096, seq_length_is_variable=False)",
        "pass mpu=mpu to deepspeed.initialize", "UlyssesSPDataLoaderAdapter(dl, ", "position_ids", "shift_labels",
    ):  # fmt: skip
        assert part in sp, part
    (variable,) = script_parallel(SP2, 8, 4, None, None)  # a script that states no length
    assert "seq_length_is_variable=True" in variable and "'sdpa'" in variable


def test_trainer_gets_accelerates_parallelism_config_for_ulysses_and_nothing_for_autotp() -> None:
    """The arguments build Accelerate's own classes, and the batch each side checks agrees: Trainer's over
    all ranks (hf_config), DeepSpeed's over ranks / sp as Accelerate rewrites it from dp_shard_size."""
    from accelerate.utils import DeepSpeedSequenceParallelConfig, ParallelismConfig

    from tuner.handoff import hf_parallel, parallelism_config_code

    assert hf_parallel({}, 8, 4096, None) == (None, [])
    none, (tp,) = hf_parallel(TP2, 8, 4096, None)
    assert none is None and "deepspeed.tp_model_init" in tp and "no TrainingArguments to add" in tp
    kwargs, (sp,) = hf_parallel(SP2, 8, 4096, "sdpa")
    assert kwargs == {
        "sp_backend": "deepspeed", "sp_size": 2, "dp_shard_size": 4,
        "sp_handler": {"sp_seq_length": 4096, "sp_seq_length_is_variable": False, "sp_attn_implementation": "sdpa"},
    }  # fmt: skip
    built = ParallelismConfig(**{**kwargs, "sp_handler": DeepSpeedSequenceParallelConfig(**kwargs["sp_handler"])})
    code = parallelism_config_code(kwargs)
    assert code in sp and "parallelism_config=" in sp and "position_ids" in sp
    evaluated = eval(code, {"ParallelismConfig": ParallelismConfig, "DeepSpeedSequenceParallelConfig":
                            DeepSpeedSequenceParallelConfig})  # fmt: skip
    assert (evaluated.sp_size, evaluated.data_parallel_size) == (built.sp_size, built.data_parallel_size) == (2, 4)
    deepspeed_view = measured(Point(4, 1, **SP2))
    trainer_view, _ = hf_config(deepspeed_view, 8)
    micro, accum = trainer_view["train_micro_batch_size_per_gpu"], trainer_view["gradient_accumulation_steps"]
    assert trainer_view["train_batch_size"] == micro * accum * 8  # transformers' trainer_config_process
    assert micro * accum * built.data_parallel_size == deepspeed_view["train_batch_size"]  # Accelerate's rewrite
    autotp = measured(Point(4, 1, **TP2))
    assert hf_config(autotp, 8)[0]["train_batch_size"] == autotp["train_batch_size"]  # both count all ranks
