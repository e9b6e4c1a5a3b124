"""Which samples of the global batch a rank trains on, under tensor and sequence parallelism.

The global batch is numbered sample by sample, and data-parallel rank d trains on samples [d x n, (d + 1) x n),
n = micro-batch x accumulation. The ranks of one tensor-parallel group must see the same samples (AutoTP
checks it on the first forward, engine.py `check_dataloader_inputs_same_across_ranks`), and the ranks of one
Ulysses group see slices of the same samples. Both build their groups from consecutive ranks (DeepSpeed 0.19.8:
utils/groups.py `_init_tp_groups_with_new_group`, ranks [d x tp, (d + 1) x tp); sequence_parallel/
parallel_state_sp.py, ranks [d x sp, (d + 1) x sp)), so a rank's data-parallel index is rank // (tp x sp).
Whatever the point's tp, sp, micro-batch and accumulation, one optimizer step trains on the same samples, so
two trials' losses compare (the first step's loss, same seed, is the same up to rounding).

Under Ulysses, rank s of its group takes the s-th slice of each sample's sequence, as DeepSpeed's
UlyssesSPDataLoaderAdapter hands it: the labels shifted before slicing (`shift_labels`, -100 after the last
token), and `position_ids`, so the gathered attention sees each token's true position.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.parallel import sizes

if TYPE_CHECKING:
    import numpy as np
    import torch

IGNORE = -100  # the label transformers' loss skips


@dataclass(frozen=True)
class Layout:
    """One rank's place: its group sizes, its data-parallel index and its rank within its Ulysses group."""

    tp: int
    sp: int
    dp: int
    dp_index: int
    sp_rank: int

    @classmethod
    def of(cls, point: Mapping[str, Any], rank: int, world: int) -> Layout:
        """The layout of `rank` of `world` for a point's knob values (tp and sp 1 when it leaves them out)."""
        tp, sp = sizes(point)
        group = tp * sp
        assert world % group == 0, f"tp {tp} x sp {sp} divides the {world} ranks (tuner.parallel checks the point)"
        return cls(tp, sp, world // group, rank // group, rank % sp)

    def first_sample(self, per_rank: int) -> int:
        """The index in the global batch of this rank's first sample, `per_rank` samples per data-parallel rank."""
        return self.dp_index * per_rank


def synthetic_ids(seed: int, vocab: int, first: int, count: int, sequence_length: int) -> np.ndarray:
    """Samples [first, first + count) of the random global batch `seed` picks, (count, seq) int64.

    Each sample has its own generator (seeded by the seed and its index), so a rank makes only its own samples
    and sample i is the same whichever rank, micro-batch or accumulation step takes it.
    """
    import numpy as np

    return np.stack(
        [np.random.default_rng([seed, i]).integers(0, vocab, sequence_length) for i in range(first, first + count)]
    ).astype(np.int64)


def sequence_slice(batch: dict[str, torch.Tensor], sp: int, sp_rank: int) -> dict[str, torch.Tensor]:
    """Rank `sp_rank`'s slice of a micro-batch under Ulysses: ids, pre-shifted labels, positions (contiguous)."""
    import torch

    ids, labels = batch["input_ids"], batch["labels"]
    micro, seq = ids.shape
    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    positions = torch.arange(seq, device=ids.device).expand(micro, seq)
    chunk = seq // sp
    part = slice(sp_rank * chunk, (sp_rank + 1) * chunk)
    return {
        "input_ids": ids[:, part].contiguous(),
        "shift_labels": shifted[:, part].contiguous(),
        "position_ids": positions[:, part].contiguous(),
    }
