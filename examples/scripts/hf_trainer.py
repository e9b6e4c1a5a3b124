"""A Hugging Face Trainer script: TrainingArguments from the command line (`--deepspeed ds_config.json ...`).

    deepspeed --num_gpus 1 examples/scripts/hf_trainer.py --deepspeed ds_config.json --output_dir out \
        --per_device_train_batch_size 4 --gradient_accumulation_steps 2 --learning_rate 0.0003 --max_steps 100

A GPT-2 built from a config with random weights, trained on random tokens (no download). Trainer hands its
model to DeepSpeed through Accelerate; `tuner search search_spaces/script-hf-trainer-cpu.yaml` runs it
unchanged and measures the engine Trainer gets.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, HfArgumentParser, Trainer, TrainingArguments


class RandomTokens(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, vocab: int, length: int, count: int) -> None:
        self.ids = torch.randint(0, vocab, (count, length), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def main() -> None:
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses()
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=512, use_cache=False)
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(config)
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    dataset = RandomTokens(config.vocab_size, 64, per_step * max(args.max_steps, 1))
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    result = trainer.train()
    if args.process_index == 0:
        print(f"trained {result.global_step} steps with Trainer", flush=True)


if __name__ == "__main__":
    main()
