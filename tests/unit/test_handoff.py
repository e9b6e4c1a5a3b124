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
    config, notes = hf_config(measured(Point(2, 2, activation_checkpointing=True)))
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
