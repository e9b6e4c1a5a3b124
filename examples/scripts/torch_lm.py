"""A plain PyTorch training script (no transformers): its own model, Dataset and DataLoader, DeepSpeed's engine.

    deepspeed --num_gpus 2 examples/scripts/torch_lm.py --deepspeed_config ds_config.json --micro-batch 4 \
        --checkpointing false --steps 100

It knows nothing of the tuner: `tuner search search_spaces/script-torch-cpu.yaml` runs it unchanged under the
trial's ranks, passing the trial's config and micro-batch through the space's argument template.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import deepspeed
import torch
from torch.utils.checkpoint import checkpoint


class TinyLM(torch.nn.Module):
    """A small causal language model: embeddings, Transformer layers, a head over the vocabulary."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, checkpointing: bool) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.blocks = torch.nn.ModuleList(
            torch.nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True)
            for _ in range(layers)
        )
        self.head = torch.nn.Linear(width, vocab)
        self.checkpointing = checkpointing

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        mask = torch.nn.Transformer.generate_square_subsequent_mask(length, device=ids.device)
        hidden = self.embed(ids)
        for block in self.blocks:
            if self.checkpointing and self.training:
                hidden = checkpoint(block, hidden, mask, None, True, use_reentrant=False)
            else:
                hidden = block(hidden, src_mask=mask, is_causal=True)
        return self.head(hidden)


class Sequences(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Token sequences of a fixed length (random here; a real job reads its corpus)."""

    def __init__(self, vocab: int, length: int, count: int, seed: int) -> None:
        self.ids = torch.randint(0, vocab, (count, length + 1), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.ids[index]
        return row[:-1], row[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deepspeed_config", required=True)
    parser.add_argument("--micro-batch", type=int, required=True)
    parser.add_argument("--checkpointing", choices=("true", "false"), default="false")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--local_rank", type=int, default=-1)
    args = parser.parse_args()

    deepspeed.init_distributed()
    model = TinyLM(vocab=512, width=64, layers=2, heads=4, checkpointing=args.checkpointing == "true")
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=args.deepspeed_config
    )
    config = json.loads(Path(args.deepspeed_config).read_text())
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    dataset = Sequences(512, args.sequence_length, count=4096, seed=rank)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.micro_batch, shuffle=True, drop_last=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    step = 0
    while step < args.steps * config["gradient_accumulation_steps"]:
        for inputs, targets in loader:
            inputs, targets = inputs.to(engine.device), targets.to(engine.device)
            loss = loss_fn(engine(inputs).reshape(-1, 512), targets.reshape(-1))
            engine.backward(loss)
            engine.step()
            step += 1
            if step >= args.steps * config["gradient_accumulation_steps"]:
                break
    if rank == 0:
        print(f"trained {args.steps} steps on {world} rank(s); last loss {loss.item():.4f}", flush=True)


if __name__ == "__main__":
    main()
