"""A real DeepSpeed trial on the user's data: 2 CPU ranks over gloo train on a token file, each on its own part."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tests.integration.test_trials import processes_of, run, spec_for
from tuner.points import Point


def test_a_trial_on_a_token_file_completes_with_a_real_loss(tmp_path: Path, cpu_ops: None) -> None:
    """The same point on random ids and on a token file where every id predicts the next (0, 1, ..., 15, 0, ...):
    both complete, and six Adam steps at lr 1e-2 learn the file far below the random ids' loss (measured: 2.9
    against 5.2; both start near ln 512 = 6.2). One warm-up step at most and exactly five timed ones, so the
    step count does not depend on how warm-up is detected (at lr 3e-2 the loss after 3 steps overshot to 7.9)."""
    path = tmp_path / "train.bin"
    np.tile(np.arange(16, dtype=np.uint16), 200).tofile(path)  # 3200 tokens; a global batch takes 8 x 64
    synthetic = spec_for(Point(2, 0), precision="fp32", warmup_steps=1, measure_steps=5, max_measure_steps=5)
    synthetic.ds_config["optimizer"]["params"]["lr"] = 1e-2  # a few steps show what was learnt
    on_data = synthetic.replace(data={"source": str(path)})

    random_ids = run(synthetic, tmp_path / "synthetic")
    learnt = run(on_data, tmp_path / "data")
    for result in (random_ids, learnt):
        assert result.ok, (result.failure_category, result.failure_reason, result.log_tail)
        assert math.isfinite(result.figures["final_loss"]) and result.figures["tokens_per_s"] > 0
    assert learnt.user_attrs()["data_source"] == str(path) and random_ids.user_attrs()["data_source"] == "synthetic"
    assert learnt.figures["final_loss"] < random_ids.figures["final_loss"] - 1.0, (
        learnt.figures["final_loss"],
        random_ids.figures["final_loss"],
    )
    assert not processes_of(tmp_path / "data")
