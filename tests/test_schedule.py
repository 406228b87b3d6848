"""The one learning-rate schedule of classification, detection and pose runs (scnet.train.schedule)."""
import pytest

from scnet.train.recipe import Recipe
from scnet.train.schedule import lr_factor, lr_schedule
from scnet.train.trainer import _lr_factor


def test_warmup_is_a_linear_ramp():
    f = lr_schedule(warmup_steps=4, warmup_start=0.2)
    assert [f(s) for s in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    # counting the current step: the first step at 1/4 of the peak, the last warm-up step at the peak
    g = lr_schedule(warmup_steps=4, warmup_counts_current=True)
    assert [g(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_falls_from_the_peak_to_zero_after_the_warmup():
    f = lr_schedule(warmup_steps=2, warmup_counts_current=True, cosine_steps=10)
    assert f(0) == 0.5 and f(2) == 1.0
    assert f(6) == pytest.approx(0.5)            # halfway through the 8 cosine steps
    assert f(10) == 0.0 and f(12) == 0.0         # the end value, and it stays there


def test_step_decay_at_the_milestones():
    f = lr_schedule(milestones=[3, 5], gamma=0.1)
    assert [f(s) for s in range(7)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    # the decay applies during the warm-up too (mmdetection's rule)
    assert lr_factor(1, warmup_steps=4, milestones=[1], gamma=0.5) == pytest.approx(0.25 * 0.5)


def test_classification_schedule():
    cosine = _lr_factor(Recipe(epochs=3, warmup_epochs=1, schedule='cosine'), steps_per_epoch=4)
    assert [cosine(s) for s in (0, 1, 3, 4, 8, 12)] == pytest.approx([0.25, 0.5, 1.0, 1.0, 0.5, 0.0])
    step = _lr_factor(Recipe(epochs=6, lr_step=2, lr_gamma=0.1, schedule='step'), steps_per_epoch=3)
    assert [step(s) for s in (0, 5, 6, 11, 12, 18)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001])
