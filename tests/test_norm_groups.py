"""BatchNorm statistics per group: a batch's labelled clips normalised as if they were alone."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.config import StudentConfig
from pipeline.models import build_student
from pipeline.models.norm_groups import separate_norms

pytestmark = pytest.mark.unit


def _logits(model, clips: list[torch.Tensor]) -> torch.Tensor:
    out = model(*clips)
    return (out[0] if len(clips) > 1 else out).logits  # FFN: the highest count's


@pytest.mark.parametrize(
    "arch, counts", [("tsm_tiny", None), ("tsm_tiny", [2, 4]), ("mobilevit_xxs", None)], ids=["tsm", "tsm-ffn", "mobilevit"]
)
def test_each_group_is_normalised_with_its_own_statistics_while_training(arch, counts):
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch=arch, image_size=32, num_frames=4, dropout=0.0), 6, counts).train()
    alone = copy.deepcopy(model)
    clips = [torch.randn(5, t, 3, 32, 32) for t in (counts or [4])[::-1]]
    with torch.no_grad():
        shared = _logits(model, clips)
        groups = separate_norms(model)
        groups.split = (2, 5)  # two labelled clips, then three unlabelled ones
        grouped = _logits(model, clips)
        first, rest = _logits(alone, [c[:2] for c in clips]), _logits(alone, [c[2:] for c in clips])
    torch.testing.assert_close(grouped[:2], first, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grouped[2:], rest, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(shared[:2], first, rtol=1e-4, atol=1e-5)  # one batch's statistics mix the groups


def test_evaluation_and_a_batch_without_groups_are_unchanged():
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch="tsm_tiny", image_size=32, num_frames=4, dropout=0.0), 6)
    plain = copy.deepcopy(model)
    groups = separate_norms(model)
    clips = torch.randn(5, 4, 3, 32, 32)
    with torch.no_grad():
        groups.split = None
        torch.testing.assert_close(model.train()(clips).logits, plain.train()(clips).logits)
        groups.split = (2, 5)
        torch.testing.assert_close(model.eval()(clips).logits, plain.eval()(clips).logits)
    assert model.state_dict().keys() == plain.state_dict().keys()


def test_a_compiled_student_with_separate_statistics_compiles_once():
    """The grouped norms trace into the student's one graph (no break, no recompile over steps)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch="tsm_tiny", image_size=32, num_frames=4), 10, [2, 4])
    separate_norms(model).split = (2, 6)
    compiles = CompileCounter()
    compiled = torch.compile(model, backend=compiles, dynamic=False)
    for _ in range(3):
        compiled(*(torch.randn(6, t, 3, 32, 32) for t in (4, 2)))[0].logits.sum().backward()
    assert compiles.frame_count == 1
