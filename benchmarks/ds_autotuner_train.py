"""The training script DeepSpeed's autotuner launches for benchmarks/ds_autotuner.py (one experiment each).

    deepspeed --autotuning tune --num_gpus 1 benchmarks/ds_autotuner_train.py \
        --deepspeed_config ds_config.json --model-config model.json --sequence-length 256

It trains the same model our trials train (tuner.workload.hf_causal_lm: a transformers config, random
weights, random token ids, nothing downloaded), so both tools measure the same workload. The autotuner
passes each experiment's DeepSpeed config as base64 in place of the --deepspeed_config path, and ends the
process itself: after the forward pass of its model-info profile run, and after optimizer step
`end_profile_step` + 1 of a measuring run (DeepSpeedEngine._autotuning_exit calls exit()). `--max-steps`
only bounds a run without autotuning. The micro batch and accumulation come from the engine's config;
`--micro-batch` / `--grad-accum` exist for the autotuner's arg_mappings and are checked against it.

Nothing here may print the word "error" to stderr: the autotuner counts any stderr line containing it as a
failed experiment (deepspeed.autotuning.utils.search_error).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Our arguments plus DeepSpeed's (--deepspeed, --deepspeed_config) and the launcher's --local_rank."""
    import deepspeed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-config", type=Path, required=True, help="JSON mapping with model_type and fields")
    parser.add_argument("--sequence-length", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=50, help="optimizer steps when autotuning does not stop us")
    parser.add_argument("--micro-batch", type=int, default=None, help="set by the autotuner's arg_mappings")
    parser.add_argument("--grad-accum", type=int, default=None, help="set by the autotuner's arg_mappings")
    parser.add_argument("--local_rank", type=int, default=0, help="passed by DeepSpeed's launcher")
    parser = deepspeed.add_config_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    """Build the model, deepspeed.initialize it with the experiment's config, train until DeepSpeed exits."""
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    from tuner.workload import hf_causal_lm

    args = parse_args(argv)
    accel = get_accelerator()
    deepspeed.init_distributed(dist_backend=accel.communication_backend_name())
    model_config: dict[str, Any] = json.loads(args.model_config.read_text())
    model = hf_causal_lm.build_model(model_config, seed=args.seed)
    engine, _, _, _ = deepspeed.initialize(
        args=args, model=model, model_parameters=[p for p in model.parameters() if p.requires_grad]
    )
    micro, accum = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
    for name, given, used in (("--micro-batch", args.micro_batch, micro), ("--grad-accum", args.grad_accum, accum)):
        if given is not None and given != used:
            raise SystemExit(f"{name} {given} from arg_mappings disagrees with the DeepSpeed config's {used}")
    device = torch.device(accel.device_name(args.local_rank))
    vocab = hf_causal_lm.vocab_size(model)
    generator = torch.Generator().manual_seed(args.seed + dist.get_rank())
    print(f"training: micro batch {micro}, accumulation {accum}, train batch {engine.train_batch_size()}", flush=True)
    for _ in range(args.max_steps * accum):
        batch = hf_causal_lm.synthetic_batch(generator, vocab, micro, args.sequence_length, device)
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
    print(f"training: {args.max_steps} steps done without an autotuning exit", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
