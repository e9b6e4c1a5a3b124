"""What DeepSpeed's AutoTP and Ulysses really leave on each of 2 gloo CPU ranks, against the memory model.

A tiny Llama (tied and untied output projection) sharded with autotp_size 2, and run under Ulysses with
sp 2: the parameters a rank holds, the ZeRO group (ranks / tp; all ranks under Ulysses) and its fp32
partition, and the activations autograd saves in one forward pass (tests/unit/test_activations.py's count).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.unit.test_activations import CONFIGS
from tuner.activations import Split, activation_bytes
from tuner.estimate_parallel import output_tied, tp_parameters
from tuner.workload.hf_causal_lm import model_shape

RANKS, SEQ, MICRO = 2, 128, 4
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "tp2 untied lm_head": ("tp", CONFIGS["llama GQA"]),
    "tp2 tied embedding": ("tp", {**CONFIGS["llama GQA"], "tie_word_embeddings": True}),
    "sp2": ("sp", CONFIGS["llama GQA"]),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(mode: str, config: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / "rank"
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={RANKS}", f"--master_port={free_port()}",
        str(Path(__file__).with_name("split_rank.py")), mode, json.dumps(config), str(out), str(SEQ), str(MICRO),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads((tmp_path / f"rank.{r}.json").read_text()) for r in range(RANKS)]


@pytest.mark.parametrize("case", list(CASES))
def test_a_rank_holds_what_the_model_predicts(case: str, tmp_path: Path) -> None:
    mode, config = CASES[case]
    shape = model_shape(config)
    tp, sp = (RANKS, 1) if mode == "tp" else (1, RANKS)
    ranks = run_ranks(mode, config, tmp_path)
    for rank in ranks:
        assert rank["parameters"] == tp_parameters(shape, tp)
        assert rank["zero_ranks"] == RANKS // tp
        assert rank["fp32_partition"] == tp_parameters(shape, tp) // (RANKS // tp)
        vocab = shape.vocab_size / (tp if output_tied(shape) else 1)
        predicted = activation_bytes(shape, SEQ, MICRO, 2, False, "cpu", Split(tp, sp)) + SEQ // sp * MICRO * vocab * 4
        assert predicted == pytest.approx(rank["saved_bytes"], rel=0.03), f"{predicted / rank['saved_bytes'] - 1:+.1%}"
