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
    """Every count's logits, side by side (FFN: the highest count's, then the lower ones')."""
    out = model(*clips)
    return torch.cat([o.logits for o in out], 1) if len(clips) > 1 else out.logits


def _running(model) -> list[torch.Tensor]:
    return [b for name, b in model.named_buffers() if "running" in name]


@pytest.mark.parametrize(
    "arch, counts", [("tsm_tiny", None), ("tsm_tiny", [2, 4]), ("mobilevit_xxs", None)], ids=["tsm", "tsm-ffn", "mobilevit"]
)
def test_each_group_is_normalised_with_its_own_statistics_while_training(arch, counts):
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch=arch, image_size=32, num_frames=4, dropout=0.0), 6, counts).train()
    alone, mixed = copy.deepcopy(model), copy.deepcopy(model)
    clips = [torch.randn(5, t, 3, 32, 32) for t in (counts or [4])[::-1]]
    with torch.no_grad():
        groups = separate_norms(model)
        groups.split = (2, 5)  # two labelled clips, then three unlabelled ones
        grouped = _logits(model, clips)
        first = _logits(alone, [c[:2] for c in clips])
        running_after_first = [b.clone() for b in _running(alone)]
        rest = _logits(alone, [c[2:] for c in clips])
        shared = _logits(mixed, clips)
    torch.testing.assert_close(grouped[:2], first, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grouped[2:], rest, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(shared[:2], first, rtol=1e-4, atol=1e-5)  # one batch's statistics mix the groups
    # the running statistics are the first group's alone, as evaluation after labels alone would use
    for a, b in zip(_running(model), running_after_first):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(a, b) for a, b in zip(_running(model), _running(mixed)))


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


def test_a_copy_of_a_grouped_student_normalises_with_its_own_weights_and_groups():
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch="tsm_tiny", image_size=32, num_frames=4, dropout=0.0), 6).train()
    separate_norms(model).split = (2, 5)
    twin = copy.deepcopy(model)
    own = {id(m) for m in twin.modules()}
    assert twin.norm_groups is not model.norm_groups and twin.norm_groups.split == (2, 5)
    assert twin.norm_groups.norms and all(id(m) in own for m in twin.norm_groups.norms)  # the copy's, not the original's
    clips = torch.randn(5, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(twin(clips).logits, model(clips).logits)


def test_a_batch_of_one_group_goes_through_in_one_pass():
    """All clips labelled: trained as without groups; none labelled: their statistics leave the running ones alone."""
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch="tsm_tiny", image_size=32, num_frames=4, dropout=0.0), 6).train()
    plain = copy.deepcopy(model)
    groups = separate_norms(model)
    clips = torch.randn(3, 4, 3, 32, 32)
    with torch.no_grad():
        groups.split = (3, 3)
        torch.testing.assert_close(model(clips).logits, plain(clips).logits)
        before = [b.clone() for b in _running(model)]
        groups.split = (0, 3)
        torch.testing.assert_close(model(clips).logits, plain(clips).logits)  # batch statistics either way
    for a, b in zip(_running(model), before):
        torch.testing.assert_close(a, b)
