"""A script's argument template (pure): every placeholder a trial fills in, each as one argument."""

from __future__ import annotations

from tuner.workload.script import PLACEHOLDERS, args_problem, fill_args, trial_values


def test_placeholders_fill_in_per_trial_and_booleans_read_as_words() -> None:
    template = ["--deepspeed_config", "{ds_config}", "--batch-size", "{micro_batch_size}", "--grad-accum",
                "{gradient_accumulation_steps}", "--ckpt={activation_checkpointing}", "--zero", "{zero_stage}",
                "--world", "{world_size}", "--seed", "{seed}", "--out", "{output_dir}", "--json={{}}"]  # fmt: skip
    values = trial_values(
        {"micro_batch_size": 4, "zero_stage": 2, "activation_checkpointing": True, "comm_overlap_comm": False},
        ds_config="/t/ds_config.json", output_dir="/t/output", grad_accum=8, world_size=2, seed=0,
    )  # fmt: skip
    assert fill_args(template, values) == [
        "--deepspeed_config", "/t/ds_config.json", "--batch-size", "4", "--grad-accum", "8", "--ckpt=true",
        "--zero", "2", "--world", "2", "--seed", "0", "--out", "/t/output", "--json={}",
    ]  # fmt: skip
    assert fill_args(["a value with spaces {seed}"], {"seed": 1}) == ["a value with spaces 1"]  # one argument


def test_an_unknown_or_broken_placeholder_is_named_with_the_allowed_ones() -> None:
    problem = args_problem(["--lr", "{learning_rate}"])
    assert problem is not None and "unknown placeholder {learning_rate}" in problem
    assert all(f"{{{name}}}" in problem for name in PLACEHOLDERS)
    assert "literal braces" in (args_problem(["{"]) or "")
    assert args_problem(["--x", "{offload_optimizer}", "{{literal}}"]) is None  # every main knob is one


def test_parallel_and_long_sequence_placeholders_fill_at_neutral_when_the_point_leaves_them_out() -> None:
    template = ["--tp", "{tensor_parallel_size}", "--sp", "{sequence_parallel_size}", "--tiled-mlp={tiled_mlp}",
                "--tiled-logits={tiled_logits}", "--seq", "{sequence_length}"]  # fmt: skip
    common = {"ds_config": "c.json", "output_dir": "o", "grad_accum": 1, "world_size": 2, "seed": 0}
    plain = trial_values({"micro_batch_size": 1, "zero_stage": 1}, sequence_length=512, **common)
    assert fill_args(template, plain) == [
        "--tp", "1", "--sp", "1", "--tiled-mlp=false", "--tiled-logits=false", "--seq", "512"
    ]  # fmt: skip
    point = {"micro_batch_size": 1, "zero_stage": 1, "sequence_parallel_size": 2, "tiled_mlp": True,
             "sequence_length": 1024}  # fmt: skip
    searched = trial_values(point, sequence_length=512, **common)  # the point's own length wins
    assert fill_args(template, searched) == [
        "--tp", "1", "--sp", "2", "--tiled-mlp=true", "--tiled-logits=false", "--seq", "1024"
    ]  # fmt: skip
