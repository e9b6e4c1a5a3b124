"""Which trials the warm server forks, and what each trial's ranks import beyond every rank's (pure)."""

from __future__ import annotations

import pytest

from tests.conftest import TINY_GPT2
from tuner.trial import warm
from tuner.trial.spec import TrialSpec
from tuner.trial.warm_leader import _rank_env


def spec(stage: int, **over: object) -> TrialSpec:
    config = {"zero_optimization": {"stage": stage}, "optimizer": {"type": "AdamW", "params": {}}}
    fields: dict[str, object] = {
        "model_config": TINY_GPT2, "sequence_length": 64, "micro_batch_size": 1, "grad_accum": 1,
        "activation_checkpointing": False, "global_batch_size": 2, "precision": "bf16", "ds_config": config,
    }  # fmt: skip
    return TrialSpec(**{**fields, **over})  # type: ignore[arg-type]


def test_zero_trials_import_what_deepspeed_initialize_would_and_the_architecture_alone_keys_the_code() -> None:
    plain = warm.profile_of(spec(0), {"deepspeed_shm_comm"})
    assert plain == {"model_config": {"model_type": "gpt2"}, "modules": [], "ops": ["deepspeed_shm_comm"]}
    assert warm.profile_of(spec(2), set())["modules"] == ["deepspeed.runtime.zero.muon.muon_optimizer"]
    assert "torch._dynamo.polyfills.loader" in warm.profile_of(spec(3), set())["modules"]
    wider = spec(0, model_config={**TINY_GPT2, "n_embd": 256})
    assert warm.profile_of(wider, {"deepspeed_shm_comm"}) == plain  # one sub-server for every size


def test_scripts_several_nodes_and_the_switch_keep_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNER_WARM_START", raising=False)
    assert warm.enabled(spec(0), multi_node=False)
    assert not warm.enabled(spec(0, script="/x/train.py"), multi_node=False)
    assert not warm.enabled(spec(0), multi_node=True)
    monkeypatch.setenv("TUNER_WARM_START", "0")
    assert not warm.enabled(spec(0), multi_node=False)


def test_a_forked_rank_gets_torchruns_variables() -> None:
    env = _rank_env({"OMP_NUM_THREADS": "1"}, 1, 2, 29500)
    assert env["RANK"] == env["LOCAL_RANK"] == "1" and env["GROUP_RANK"] == "0"
    assert env["WORLD_SIZE"] == env["LOCAL_WORLD_SIZE"] == "2"
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["OMP_NUM_THREADS"]) == ("127.0.0.1", "29500", "1")
