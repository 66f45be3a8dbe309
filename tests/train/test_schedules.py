import io
import math

import pytest
import torch

from pyro_mmvae.train.schedules import (
    Constant,
    CosineLR,
    LinearAnnealing,
    Schedule,
    StepLR,
    as_beta_schedule,
    as_lr_schedule,
    build_lr_scheduler,
    lr_schedule_config,
    lr_schedule_depends_on_epochs,
)


def test_constant():
    s = Constant(2.5)
    assert [s(e) for e in range(3)] == [2.5, 2.5, 2.5]
    assert s.final == 2.5
    assert s.config() == {"kind": "constant", "value": 2.5}


def test_linear_annealing_values():
    s = LinearAnnealing(0.1, 1.0, warmup_epochs=4)
    expected = [0.1, 0.325, 0.55, 0.775, 1.0, 1.0, 1.0]
    assert [s(e) for e in range(7)] == pytest.approx(expected, abs=1e-12)
    assert s.final == 1.0
    assert s.config() == {"kind": "linear", "start": 0.1, "end": 1.0, "warmup_epochs": 4}


def test_linear_annealing_downwards_and_without_warmup():
    down = LinearAnnealing(2.0, 1.0, warmup_epochs=2)
    assert [down(e) for e in range(4)] == [2.0, 1.5, 1.0, 1.0]
    none = LinearAnnealing(0.5, 3.0, warmup_epochs=0)
    assert none(0) == 3.0


@pytest.mark.parametrize(
    "args, match",
    [
        ((0.0, 1.0, 3), "start must be a finite number > 0"),
        ((-0.1, 1.0, 3), "start must be a finite number > 0"),
        ((0.1, 0.0, 3), "end must be a finite number > 0"),
        ((0.1, 1.0, -1), "warmup_epochs"),
        ((0.1, 1.0, 1.5), "warmup_epochs"),
        ((0.1, float("inf"), 2), "end must be a finite number"),
    ],
    ids=["zero-start", "negative-start", "zero-end", "negative-warmup", "fractional-warmup", "inf-end"],
)
def test_linear_annealing_rejects(args, match):
    with pytest.raises(ValueError, match=match):
        LinearAnnealing(*args)


def test_schedule_rejects_negative_epoch():
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        Constant(1.0)(-1)


def test_as_beta_schedule():
    assert isinstance(as_beta_schedule(1.0), Constant)
    s = LinearAnnealing(0.1, 1.0, 2)
    assert as_beta_schedule(s) is s
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="beta must be a finite number > 0"):
            as_beta_schedule(bad)
    with pytest.raises(TypeError, match="plain callable"):
        as_beta_schedule(lambda e: 1.0)
    with pytest.raises(TypeError, match="must be a number"):
        as_beta_schedule("1.0x")


def test_custom_schedule_subclass():
    class Halving(Schedule):
        final = 0.125

        def value(self, epoch):
            return max(0.125, 1.0 / 2**epoch)

        def config(self):
            return {"kind": "halving"}

    s = as_beta_schedule(Halving())
    assert [s(e) for e in range(5)] == [1.0, 0.5, 0.25, 0.125, 0.125]


def _lrs(spec, epochs, lr=1.0):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = build_lr_scheduler(spec, opt, epochs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_values():
    epochs = 4
    got = _lrs(CosineLR(final_lr=0.2), epochs, lr=1.0)
    expected = [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[0] == 1.0 and got[-1] > 0.2
    assert _lrs("cosine", 2, lr=0.5) == pytest.approx([0.5, 0.25])


def test_step_values():
    assert _lrs(StepLR(step_size=2, gamma=0.5), 5) == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25])
    # default step size: epochs // 3
    assert _lrs("step", 6) == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_lr_schedule_specs():
    assert as_lr_schedule(None) is None
    assert isinstance(as_lr_schedule("Cosine"), CosineLR)
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        as_lr_schedule("linear")
    with pytest.raises(TypeError, match="lr_schedule must be"):
        as_lr_schedule(3)
    with pytest.raises(ValueError, match="final_lr"):
        CosineLR(-1.0)
    with pytest.raises(ValueError, match="step_size"):
        StepLR(0)
    with pytest.raises(ValueError, match="gamma"):
        StepLR(2, gamma=0.0)
    assert lr_schedule_config("cosine") == {"kind": "cosine", "final_lr": 0.0}
    assert lr_schedule_depends_on_epochs("cosine")
    assert lr_schedule_depends_on_epochs("step")
    assert not lr_schedule_depends_on_epochs(StepLR(3))
    assert not lr_schedule_depends_on_epochs(None)


def test_callable_lr_schedule():
    def exp(opt):
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)

    assert _lrs(exp, 3) == pytest.approx([1.0, 0.5, 0.25])
    assert lr_schedule_config(exp)["kind"] == "callable"
    assert lr_schedule_depends_on_epochs(exp)
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(TypeError, match="must return a torch LR scheduler"):
        build_lr_scheduler(lambda opt: 3, torch.optim.SGD([p], lr=1.0), 2)


@pytest.mark.parametrize("spec", ["cosine", "step"])
def test_scheduler_state_loads_weights_only(spec):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_lr_scheduler(spec, opt, 6)
    for _ in range(3):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = build_lr_scheduler(spec, opt2, 6)
    sched2.load_state_dict(state)
    opt.step()
    sched.step()
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
