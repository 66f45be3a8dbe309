"""A user's Pyro program trained by ``fit``: run in one process by the tests, or by ``torchrun`` with N ranks.

``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_program.py OUT [EPOCHS] [RESUME]``
trains it with data parallelism; rank 0 writes ``OUT/result.pt`` (per-step losses, final parameters,
and what ``sharded_program`` computes).
The guide is deterministic (z = encoder(x), a Delta), so one process and N processes optimise exactly
the same objective from the same batches and must agree to float32 rounding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_mmvae.data import Modality, MultimodalDataset
from pyro_mmvae.distributed import init_from_env, shutdown, world
from pyro_mmvae.infer import BetaELBO
from pyro_mmvae.train import Callback, fit

sys.path.insert(0, str(Path(__file__).parent))
import sharded_program  # noqa: E402

D = 2
MODS = (Modality("a", (3,), likelihood="normal", scale=0.5), Modality("b", (4,), likelihood="normal", scale=0.5))


def dataset(n=101, seed=0):
    """101 rows: batches of 16 leave a last batch of 5 (shares of 3 and 2 rows on 2 ranks)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, D, generator=g)
    a = z @ torch.randn(D, 3, generator=g) + 0.3 * torch.randn(n, 3, generator=g)
    b = torch.tanh(z @ torch.randn(D, 4, generator=g)) + 0.3 * torch.randn(n, 4, generator=g)
    present = {"a": torch.ones(n, dtype=torch.bool), "b": torch.rand(n, generator=g) > 0.2}
    return MultimodalDataset({"a": a, "b": b}, present=present, modalities=MODS)


class DeltaGuide(nn.Module):
    """z = encoder(x_a, x_b·present_b): a deterministic guide (no random draws)."""

    modalities = MODS

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, D))

    def forward(self, batch, subset=None, beta=1.0):
        x = torch.cat([batch.data["a"], batch.data["b"] * batch.present["b"][:, None]], -1)
        with pyro.plate("data", batch.batch_size), poutine.scale(scale=beta):
            pyro.sample("z", dist.Delta(self.net(x)).to_event(1))


def build():
    """``(model, guide)``: the same initial parameters in every process."""
    torch.manual_seed(0)
    decoders = nn.ModuleDict({"a": nn.Linear(D, 3), "b": nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 4))})

    def model(batch, beta=1.0):
        pyro.module("decoders", decoders)
        with pyro.plate("data", batch.batch_size):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1).expand([batch.batch_size]))
            for name in ("a", "b"):
                with poutine.mask(mask=batch.present[name]):
                    pyro.sample(f"x_{name}", dist.Normal(decoders[name](z), 0.5).to_event(1), obs=batch.data[name])

    model.modalities = MODS
    model.decoders = decoders
    return model, DeltaGuide()


class StepLosses(Callback):
    """The mean loss of every step (over the whole batch, on every rank)."""

    all_ranks = True

    def __init__(self):
        self.losses, self._sum, self._count = [], 0.0, 0

    def on_fit_start(self, state):
        self._sum = self._count = 0

    def on_step_end(self, state):
        if state.loss_count < self._count:  # a new epoch restarted the running sums
            self._sum = self._count = 0
        self.losses.append((state.loss_sum - self._sum) / (state.loss_count - self._count))
        self._sum, self._count = state.loss_sum, state.loss_count


def train(run_dir=None, epochs=3, resume=False):
    """Train; returns ``(per-step losses, final parameters by name, FitResult)``."""
    pyro.clear_param_store()
    model, guide = build()
    steps = StepLosses()
    result = fit(
        model,
        guide,
        dataset(),
        BetaELBO(),
        epochs=epochs,
        batch_size=16,
        lr=2e-2,
        val_data=dataset(40, seed=1),
        callbacks=[steps],
        progress=False,
        device="cpu",
        run_dir=run_dir,
        resume=resume,
        seed=3,
    )
    params = {f"guide.{k}": v.detach().clone() for k, v in guide.state_dict().items()}
    params.update({f"decoders.{k}": v.detach().clone() for k, v in model.decoders.state_dict().items()})
    return steps.losses, params, result


if __name__ == "__main__":
    out = Path(sys.argv[1])
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    resume = len(sys.argv) > 3 and sys.argv[3] == "resume"
    w = init_from_env("cpu")
    try:
        losses, params, result = train(out / "run", epochs, resume)
        # the sharded sampler and coherence in the same processes: one launch fewer for the test suite
        torch.set_num_threads(1)
        run = sharded_program.draws()
        correct, count = sharded_program.coherence()
        if w.is_main:
            record = {"losses": losses, "params": params, "world": world().size, "history": result.history}
            record["sharded"] = {"samples": run.samples, "ranks": run.ranks, "correct": correct, "count": count}
            torch.save(record, out / "result.pt")
    finally:
        shutdown()
