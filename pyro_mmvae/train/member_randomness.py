"""Per-member random draws inside a vectorised ensemble (``torch.func.vmap`` over members).

An ensemble member must draw exactly the numbers it would draw if it were trained alone by
:func:`~pyro_mmvae.train.fit` with its seed: there, every draw of a training step (reparameterised
noise, masks, categorical picks, dropout) comes from torch's global generator seeded with
``set_seed(seed)``. Inside ``vmap`` the program runs once for all members, so a draw such as
``torch.empty(B, D).normal_()`` would give one tensor for everyone (``randomness="same"``) or
numbers from one shared stream (``"different"``), neither equal to a lone run's.

:class:`MemberRandomness` is a ``TorchFunctionMode`` that catches torch's random operations at the
Python level, where the member dimension is still visible: it unwraps the batched arguments of the
ensemble's vmap level, calls the same operation once per member with that member's own
``torch.Generator`` (seeded like the lone run's global generator, so the same kernel produces the
same numbers), stacks the results ``(M, *shape)`` and hands them back batched. Operations it does
not know keep vmap's ``randomness="error"``, so an unsplit draw raises instead of silently sharing
numbers between members.

Limits: draws from NumPy or Python's ``random`` are invisible to torch and are not split; an
explicit ``generator=`` inside a member's program is refused (one generator object cannot serve
every member the way it serves a lone run); an in-place fill of a tensor created without the member
dimension (``torch.empty(shape).normal_()``) returns a new tensor, which is what callers use (torch's
own distributions do). ``F.dropout`` is reproduced as the CPU kernel computes it (Bernoulli noise
scaled by ``1/(1-p)``); on CUDA torch uses a fused kernel with other numbers, so there a dropout
member equals a lone run in law, not in value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._functorch.pyfunctorch import temporarily_pop_interpreter_stack
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

_functorch = torch._C._functorch

# random operations that fill their first argument in place
_FILLS = {
    torch.Tensor.normal_,
    torch.Tensor.uniform_,
    torch.Tensor.bernoulli_,
    torch.Tensor.exponential_,
    torch.Tensor.random_,
    torch.Tensor.geometric_,
    torch.Tensor.log_normal_,
    torch.Tensor.cauchy_,
}
# random operations that return a new tensor and take ``generator=``
_DRAWS = {
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.normal,
    torch.bernoulli,
    torch.Tensor.bernoulli,
    torch.multinomial,
    torch.Tensor.multinomial,
    torch.poisson,
    torch.binomial,
    torch._standard_gamma,
    torch._sample_dirichlet,
}
# ``*_like`` draws take no generator: drawn as their plain counterparts with the input's shape and dtype
_LIKE = {torch.rand_like: torch.rand, torch.randn_like: torch.randn}


class MemberRandomness(TorchFunctionMode):
    """Split torch's random operations per member inside the ensemble's ``vmap``.

    Args:
        generators: one ``torch.Generator`` per member, on the members' device; member ``m``'s
            draws advance ``generators[m]`` exactly as a lone run's draws advance the global one.

    Use :meth:`at_level` inside the vmapped function (where the member level is known)::

        with randomness.at_level(torch._C._functorch.maybe_current_level()):
            loss = objective.differentiable_loss(model, guide, batch)
    """

    def __init__(self, generators: list[torch.Generator]):
        super().__init__()
        self.generators = list(generators)
        self.level: int | None = None

    def at_level(self, level: int) -> MemberRandomness:
        self.level = level
        return self

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _FILLS or func in _DRAWS or func in _LIKE or func is F.dropout:
            if self.level is not None and _functorch.maybe_current_level() == self.level:
                return self._per_member(func, args, kwargs)
        return func(*args, **kwargs)

    # ------------------------------------------------------------------ internals
    def _unwrap(self, x):
        """``x``'s physical tensor with the member dimension first, or None for a value shared by all."""
        if not isinstance(x, torch.Tensor) or not _functorch.is_batchedtensor(x):
            return None
        if _functorch.maybe_get_level(x) != self.level:
            raise NotImplementedError(
                "a random draw inside a nested vmap of an ensemble member's program is not supported"
            )
        t, bdim = _functorch._unwrap_batched(x, self.level)
        return None if bdim is None else t.movedim(bdim, 0)

    def _per_member(self, func, args, kwargs):
        if kwargs.pop("generator", None) is not None:
            raise ValueError(
                f"{getattr(func, '__name__', func)} was given an explicit generator= inside an ensemble member's "
                "program; ensemble members draw from their own generators (one per seed). Drop generator= (the "
                "global generator, which fit seeds), or train the members one by one with fit"
            )
        if func is F.dropout:
            return self._dropout(*args, **kwargs)
        if func in _LIKE:
            like = args[0]
            kwargs.setdefault("dtype", like.dtype)
            kwargs.setdefault("device", like.device)
            return self._per_member(_LIKE[func], (tuple(like.shape),), kwargs)
        flat, spec = tree_flatten((args, kwargs))
        physical = [self._unwrap(x) for x in flat]
        fill = func in _FILLS
        with temporarily_pop_interpreter_stack():
            outs = []
            for m, g in enumerate(self.generators):
                values = [x if p is None else p[m] for p, x in zip(physical, flat)]
                a, kw = tree_unflatten(values, spec)
                if fill:  # fill a private copy: the shared target must not be written M times
                    a = (a[0].clone(), *a[1:])
                outs.append(func(*a, **kw, generator=g))
            stacked = torch.stack(outs)
        out = _functorch._add_batch_dim(stacked, 0, self.level)
        if fill and physical[0] is not None:
            return args[0].copy_(out)  # a batched target keeps its in-place meaning
        return out

    def _dropout(self, input, p: float = 0.5, training: bool = True, inplace: bool = False):
        if not training or p == 0.0:
            return input
        if p == 1.0:
            return input * 0.0
        # the CPU kernel: Bernoulli(1-p) noise scaled by 1/(1-p), then one multiplication
        noise = self._per_member(torch.Tensor.bernoulli_, (torch.empty_like(input), 1.0 - p), {})
        noise = noise.div(1.0 - p)
        return input.mul_(noise) if inplace else input * noise
