"""Imported once by the forkserver of `tests.distributed.ranks`: quantizes, dequantizes and trains a tiny
model, so the kernels the CPU path compiles (torch.compile) exist before any rank is forked and no rank
pays the compilation again. One thread: the forkserver must not own a thread pool when it forks."""

import torch

torch.set_num_threads(1)

from tests.distributed import workers  # noqa: E402

_model = workers.tiny_qlora()
_model(**{"input_ids": torch.ones(2, 5, dtype=torch.long), "labels": torch.ones(2, 5, dtype=torch.long)}).loss.backward()
del _model
