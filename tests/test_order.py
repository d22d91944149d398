"""The order-aware MobileViT head learns what the seeds' head cannot: time-reversed classes
(experiments/order_heads.py: a frozen random encoder, the temporal head alone, on the CPU)."""

import numpy as np
import pytest

from experiments.order_heads import reversal_accuracy


@pytest.mark.unit  # seconds: heads alone on rendered frames, no stage runs
def test_the_position_head_learns_time_reversed_classes_the_seeds_head_cannot():
    blind = [reversal_accuracy("attention", seed)[1] for seed in (0, 1, 2)]
    aware = [reversal_accuracy("attention_pos", seed)[1] for seed in (0, 1, 2)]
    assert blind == pytest.approx([0.5] * 3, abs=1e-6)  # a video and its reversal get the same logits
    assert np.mean(aware) >= 0.75 and min(aware) > 0.6, aware  # every seed above chance, well above on average
