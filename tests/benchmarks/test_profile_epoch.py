"""The epoch profiler's arithmetic count and its flag check (no timing here)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks import profile_epoch


def test_sparse_products_are_counted_as_two_flops_per_entry_and_column():
    x = torch.randn(10, 4, requires_grad=True)
    col, crow, w = torch.tensor([0, 1, 2, 3, 9]), torch.tensor([0, 2, 5]), torch.ones(5)
    a, b = torch.randn(3, 5), torch.randn(5, 2)

    def step() -> None:
        F.embedding_bag(col, x.detach(), crow, mode="sum", per_sample_weights=w, include_last_offset=True)
        a @ b

    assert profile_epoch.epoch_flops(step) == 2 * 5 * 4 + 2 * 3 * 5 * 2


def test_unknown_model_is_refused_with_the_flag_named(capsys):
    with pytest.raises(SystemExit):
        profile_epoch.main(["--models", "lightgcn,ngcf"])
    assert "--models: unknown ngcf" in capsys.readouterr().err


def test_features_flag_takes_only_random_or_real(capsys):
    with pytest.raises(SystemExit):
        profile_epoch.main(["--features", "clip"])
    assert "--features: invalid choice: 'clip'" in capsys.readouterr().err
