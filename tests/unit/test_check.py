"""`tuner check`'s pure part: deltas and the verdict against hand-computed figures, the version diff, the
provenance read and the trial rebuilt from it; and a check recorded in a study ranks nowhere."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from tests.conftest import TINY_GPT2
from tests.unit.test_ranking import DISTRIBUTIONS
from tuner.check import Delta, check_limit, judge, read_provenance, rebuild, recorded_cpus, version_changes
from tuner.dsconfig import build_ds_config
from tuner.errors import SpaceError
from tuner.points import Point
from tuner.ranking import best, rank_study
from tuner.results import results_frame, table_text
from tuner.space import parse_space
from tuner.state import finished_points
from tuner.store import CHECK_OF, measured_memory, open_storage, pareto_front

RECORDED = {"tokens_per_s": 2000.0, "peak_mem_gb": 10.0, "samples_per_s": 31.25}


def test_a_throughput_drop_within_the_slowdown_passes_and_past_it_fails_naming_the_figure() -> None:
    # 1,920 / 2,000 = 0.96: 4% slower, inside 5%; 1,880 / 2,000 = 0.94: 6% slower, past it.
    ok = judge(RECORDED, {"tokens_per_s": 1920.0, "peak_mem_gb": 10.0})
    assert ok.ok and ok.exit_code == 0 and ok.reasons == ()
    assert ok.deltas[0].change == pytest.approx(-0.04)
    slow = judge(RECORDED, {"tokens_per_s": 1880.0, "peak_mem_gb": 10.0})
    assert slow.exit_code == 1
    assert slow.reasons == ("tokens_per_s fell 6.0% (recorded 2,000, measured 1,880; --max-slowdown 5%)",)
    assert judge(RECORDED, {"tokens_per_s": 1880.0, "peak_mem_gb": 10.0}, max_slowdown=0.1).ok


def test_memory_growth_past_its_limit_fails_and_faster_or_smaller_never_does() -> None:
    # 10.6 / 10 = 1.06: 6% more memory, past 5%; 10.4: 4%, inside.
    grown = judge(RECORDED, {"tokens_per_s": 2000.0, "peak_mem_gb": 10.6})
    assert grown.reasons == ("peak_mem_gb rose 6.0% (recorded 10, measured 10.6; --max-memory-growth 5%)",)
    assert grown.deltas[1].change == pytest.approx(0.06)
    assert judge(RECORDED, {"tokens_per_s": 2000.0, "peak_mem_gb": 10.4}).ok
    better = judge(RECORDED, {"tokens_per_s": 4000.0, "peak_mem_gb": 5.0})  # +100% tokens/s, -50% memory
    assert better.ok and [d.change for d in better.deltas] == [pytest.approx(1.0), pytest.approx(-0.5)]
    both = judge(RECORDED, {"tokens_per_s": 1000.0, "peak_mem_gb": 20.0}, max_slowdown=0.2, max_memory_growth=0.5)
    assert [r.split()[0] for r in both.reasons] == ["tokens_per_s", "peak_mem_gb"]


def test_a_failed_run_fails_with_its_category_and_reason() -> None:
    verdict = judge(RECORDED, None, ("oom", "rank 0: peak 12 GB went over 8 GB"))
    assert verdict.exit_code == 1 and verdict.failure == ("oom", "rank 0: peak 12 GB went over 8 GB")
    assert verdict.reasons == ("the run failed: oom: rank 0: peak 12 GB went over 8 GB",)
    assert all(d.measured is None and d.change is None and not d.over for d in verdict.deltas)


def test_a_script_without_tokens_compares_samples_per_s() -> None:
    recorded = {"samples_per_s": 40.0, "peak_mem_gb": 2.0}
    verdict = judge(recorded, {"samples_per_s": 30.0, "peak_mem_gb": 2.0})  # 25% slower
    assert verdict.deltas[0].name == "samples_per_s" and verdict.reasons[0].startswith("samples_per_s fell 25.0%")


def test_delta_direction_and_limits() -> None:
    assert Delta("tokens_per_s", 100.0, 95.0, -0.05).over is False  # exactly at the limit passes
    assert Delta("peak_mem_gb", 0.0, 1.0, 0.05).change is None  # nothing recorded: no change to judge
    assert check_limit(0.0, "--max-slowdown") == 0.0
    for flag, bad in (("--max-slowdown", 1.0), ("--max-slowdown", -0.1), ("--max-memory-growth", float("nan"))):
        with pytest.raises(SpaceError, match=flag):
            check_limit(bad, flag)
    assert check_limit(2.0, "--max-memory-growth") == 2.0


def test_version_changes_name_what_moved_and_ignore_what_the_check_cannot_tell() -> None:
    was = {"torch": "2.12.0", "deepspeed": "0.19.8", "transformers": "5.0.0", "device": "NVIDIA H100 80GB HBM3"}
    now = {"torch": "2.13.0", "deepspeed": "0.19.8", "transformers": "5.0.0", "device": "NVIDIA H200"}
    changes = version_changes(was, now)
    assert [c.describe() for c in changes] == ["torch 2.12.0 -> 2.13.0", "device NVIDIA H100 80GB HBM3 -> NVIDIA H200"]
    assert version_changes(was, {"torch": "2.12.0"}) == []  # the others unknown now: not a change
    assert [c.describe() for c in version_changes({}, {"torch": "2.13.0"})] == ["torch not recorded -> 2.13.0"]


SPACE: dict[str, Any] = {
    "study": "s",
    "model": {"config": TINY_GPT2},
    "data": {"sequence_length": 64},
    "training": {"global_batch_size": 8, "precision": "fp32", "base_config": {"optimizer": {"type": "AdamW"}}},
    "hardware": {"gpus_per_trial": 2},
    "space": {"micro_batch_size": [2], "zero_stage": [0, 1]},
}
POINT = Point(2, 1)


def provenance(**changes: Any) -> dict[str, Any]:
    space = parse_space(copy.deepcopy(SPACE), "s").model_dump(mode="json")
    out = {
        "study": "s", "storage": "sqlite:///t.db", "trial": 3, "point": POINT.params(), "format": "deepspeed",
        "figures": dict(RECORDED), "versions": {"torch": "2.13.0"}, "world_size": 2, "measured_ranks": 2,
        "space": space,
    }  # fmt: skip
    out.update(changes)
    return out


def measured_config(ranks: int = 2) -> dict[str, Any]:
    return build_ds_config(
        {"optimizer": {"type": "AdamW"}}, POINT, global_batch=8, ranks=ranks, precision="fp32", accelerator="cpu"
    )


def test_read_provenance_refuses_what_a_tuner_export_would_not_write() -> None:
    rec = read_provenance(provenance())
    assert (rec.study, rec.trial, rec.measured_ranks, rec.fmt) == ("s", 3, 2, "deepspeed")
    for broken, key in (
        ([], "JSON object"),
        (provenance(figures={"peak_mem_gb": 1.0}), "tokens_per_s or samples_per_s"),
        (provenance(figures={"tokens_per_s": 1.0}), "peak_mem_gb"),
        (provenance(trial="3"), "'trial'"),
        (provenance(study=None), "'study'"),
        (provenance(measured_ranks=None, measured_with={}), "measured_ranks"),
    ):
        with pytest.raises(SpaceError, match=key):
            read_provenance(broken)


def test_rebuild_runs_the_committed_config_at_the_measured_ranks() -> None:
    rec = read_provenance(provenance())
    space = parse_space(rec.space, rec.study)
    config = measured_config()
    spec, notes = rebuild(rec, space, config, "cpu", None)
    assert (spec.micro_batch_size, spec.grad_accum, spec.world_size, spec.global_batch_size) == (2, 2, 2, 8)
    assert spec.ds_config["zero_optimization"]["stage"] == 1 and spec.point == POINT.params()
    assert notes == []  # the config as measured, for the device it was measured on: nothing to say
    assert spec.ds_config["optimizer"]["params"]["torch_adam"] is True  # retargeted for CPU
    assert rebuild(rec, space, config, "cpu", 0.5)[0].device_memory_gb == 0.5
    # Exported for 4 ranks (accumulation 1): brought back to the 2 it was measured on (accumulation 2).
    wide = {**config, "gradient_accumulation_steps": 1, "train_batch_size": 8}
    spec4, notes4 = rebuild(read_provenance(provenance(world_size=4)), space, wide, "cpu", None)
    assert spec4.grad_accum == 2 and spec4.ds_config["train_batch_size"] == 8
    assert any("checked on the 2 it was measured on" in n for n in notes4)


def test_rebuild_refuses_a_committed_config_of_another_batch_layout() -> None:
    rec = read_provenance(provenance())
    space = parse_space(rec.space, rec.study)
    edited = {**measured_config(), "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1}
    with pytest.raises(SpaceError, match="train_micro_batch_size_per_gpu: the committed config has 4"):
        rebuild(rec, space, edited, "cpu", None)
    with pytest.raises(SpaceError, match="measured on 4 rank"):
        rebuild(read_provenance(provenance(measured_ranks=4)), space, measured_config(), "cpu", None)


def test_an_hf_export_checks_the_config_the_search_built() -> None:
    rec = read_provenance(provenance(format="hf"))
    space = parse_space(rec.space, rec.study)
    auto = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto"}
    spec, notes = rebuild(rec, space, auto, "cpu", None)
    assert spec.ds_config["train_micro_batch_size_per_gpu"] == 2 and "Trainer" in notes[0]


def _add(study: optuna.Study, point: Point, value: float, **attrs: Any) -> None:
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE, values=[value, 1.0], params=point.params(),
            distributions=DISTRIBUTIONS,
            user_attrs={"point": point.label(), "tokens_per_s": value, "peak_mem_gb": 1.0, **attrs},
        )
    )  # fmt: skip


def test_a_recorded_check_ranks_nowhere_but_results_list_it(tmp_path: Path) -> None:
    study = optuna.create_study(
        study_name="s", storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"), directions=["maximize", "minimize"]
    )
    study.set_user_attr("objectives", ["tokens_per_s", "peak_mem_gb"])
    _add(study, POINT, 100.0)
    _add(study, Point(2, 0), 90.0)
    _add(study, POINT, 500.0, **{CHECK_OF: 0})  # a check measured 5x faster on a newer stack
    top = best(rank_study(study))
    assert top is not None and top.number == 0 and top.measurements == 1  # not the check, not its mean
    assert 2 not in {r.number for r in rank_study(study)}
    assert [t.number for t in pareto_front(study)] == [0]  # the check does not push trial 0 off the front
    assert len(measured_memory(study)) == 2 and finished_points(study)[POINT].number == 0
    assert list(results_frame(study)["number"]) == [0, 1]  # the report's frame: no check in its plots
    frame = results_frame(study, checks=True)
    assert list(frame["number"]) == [0, 1, 2] and frame.iloc[2][CHECK_OF] == 0 and frame["rank"].isna().iloc[2]
    assert "check_of" in table_text(frame).splitlines()[0]
    json.dumps(frame.iloc[2][CHECK_OF].item())  # a plain integer in the JSON results


def test_the_check_gives_each_rank_the_threads_the_trial_measured_with() -> None:
    assert recorded_cpus({"threads_per_rank": 2.0}, 4) == 8
    assert recorded_cpus({}, 4) is None and recorded_cpus({"threads_per_rank": 0.0}, 1) is None


def test_a_script_winner_whose_script_is_gone_is_bad_input(tmp_path: Path) -> None:
    from tuner.check_run import load_inputs

    script = {k: v for k, v in SPACE.items() if k != "model"}
    script["workload"] = {"script": str(tmp_path / "gone.py"), "args": ["--deepspeed_config", "{ds_config}"]}
    prov = provenance(space=parse_space(copy.deepcopy(script), "s").model_dump(mode="json"))
    (tmp_path / "ds_config.json").write_text(json.dumps(measured_config()))
    (tmp_path / "ds_config.provenance.json").write_text(json.dumps(prov))
    with pytest.raises(SpaceError, match=r"workload.script: .*gone.py is gone: a script winner is checked by running"):
        load_inputs(tmp_path / "ds_config.json", None, None)
    (tmp_path / "gone.py").write_text("print('trains')\n")
    inputs = load_inputs(tmp_path / "ds_config.json", None, None)
    assert inputs.spec.script == str(tmp_path / "gone.py") and inputs.spec.script_args[1] == "{ds_config}"


def test_a_trial_measured_on_gpus_is_not_checked_on_a_machine_without_one(tmp_path: Path) -> None:
    from tuner.check_run import load_inputs

    assert read_provenance(provenance(measured_with={"accelerator": "cuda"})).accelerator == "cuda"
    (tmp_path / "ds_config.json").write_text(json.dumps(measured_config()))
    prov = provenance(measured_with={"accelerator": "cuda", "ranks": 2})
    (tmp_path / "ds_config.provenance.json").write_text(json.dumps(prov))
    with pytest.raises(SpaceError, match="--address: trial 3 was measured on GPUs and this machine has none"):
        load_inputs(tmp_path / "ds_config.json", None, None)
    prov["measured_with"]["accelerator"] = "cpu"
    (tmp_path / "ds_config.provenance.json").write_text(json.dumps(prov))
    assert load_inputs(tmp_path / "ds_config.json", None, None).accelerator == "cpu"
