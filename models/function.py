"""A user's plain Pyro function as a model of the library: ``FunctionModel`` and ``@multimodal_model``.

Any Pyro function ``model(batch, beta=1.0)`` that follows the site-name convention (shared latent at
``"z"`` inside ``pyro.plate("data", B)``, modality ``m`` observed at ``"x_m"`` under the batch's
presence mask, β through ``poutine.scale``) is a multimodal VAE. To train, generate from and sample
it with the library, declare which modalities it models::

    decoders = nn.ModuleDict({...})

    @multimodal_model(modalities, latent_dim=2)
    def model(batch, beta=1.0):
        pyro.module("decoders", decoders)      # Pyro's usual way to register networks
        ...

    fit(model, guide, data, BetaELBO(), epochs=10, batch_size=128)   # decoders train too

Why a wrapper: networks registered with ``pyro.module`` inside a function live in Pyro's global param
store, not in any ``nn.Module`` the optimizer or a checkpoint can see (``BetaELBO()(fn, guide)`` is an
``ELBOModule`` whose ``parameters()`` hold only the guide's). :meth:`FunctionModel.bind` traces the
program once and adopts every parameter it registers — the very ``nn.Parameter`` objects of the
user's networks, not copies — so ``parameters()``, ``state_dict()``, ``load_state_dict()`` and
``.to(device)`` cover them. Every library entry point (``fit``, conditional generation, metrics)
binds a model on the first batch it sees; after binding, a call that registers a parameter the model
does not own raises, so no network can silently stay untrained. Parameters made with ``pyro.param``
(not ``pyro.module``) are not ``nn.Parameter`` objects and are refused with a message saying how to
declare them (an ``nn.Module`` holding ``nn.Parameter`` registered with ``pyro.module``).

Generation reads the program itself: :meth:`prior_dist` is the distribution at site ``"z"`` and
:meth:`likelihood_dist` / :meth:`reconstruct` condition the program on ``z`` and read the
distributions at the observed sites, so a function model needs no extra methods.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch import nn

from ..data.batch import MultimodalBatch
from ..data.modality import Modality
from ..nn.per_modality import index_modalities
from ..sites import LATENT_SITE, observed_site
from .base import NamedModalities


class UnregisteredParameterError(RuntimeError):
    """A bound function model registered a parameter it does not own (it would never be trained)."""


def _key(site: str) -> str:
    """A state-dict-safe key for a param-store name (``"decoders$$$square.0.weight"``)."""
    return re.sub(r"[^0-9A-Za-z_]", "_", site)


class _ParamWatch(Messenger):
    """Checks every ``param`` site of the program against the parameters its model owns."""

    def __init__(self, owned: set[int]):
        super().__init__()
        self.owned = owned

    def _postprocess_message(self, msg):
        if msg["type"] == "param" and id(msg["value"]) not in self.owned:
            raise UnregisteredParameterError(
                f"the function model registered parameter {msg['name']!r} after it was bound, so the optimizer "
                "and checkpoints do not know it: register every network before the first call (or build a new "
                "FunctionModel), and clear Pyro's param store between models that reuse names "
                "(pyro.clear_param_store())"
            )


class FunctionModel(NamedModalities, nn.Module):
    """A Pyro function ``fn(batch, beta=1.0)`` with declared modalities, usable wherever a library model is.

    Args:
        fn: the generative program (see the module docstring for its site names).
        modalities: the :class:`~pyro_mmvae.data.Modality` objects it observes.
        latent_dim: the size D of the shared latent ``"z"`` (read from the program when omitted).
        modules: optional networks to own from the start (``name -> nn.Module``); the others that the
            program registers with ``pyro.module`` are adopted by :meth:`bind`.

    Attributes:
        modalities: ``name -> Modality``; ``names`` their order.
    """

    def __init__(
        self,
        fn: Callable,
        modalities: Iterable[Modality],
        latent_dim: int | None = None,
        modules: Mapping[str, nn.Module] | None = None,
    ):
        super().__init__()
        if not callable(fn):
            raise TypeError(f"fn must be a Pyro function model(batch, beta=1.0), got {type(fn).__name__}")
        if latent_dim is not None and (isinstance(latent_dim, bool) or int(latent_dim) < 1):
            raise ValueError(f"latent_dim must be an integer >= 1, got {latent_dim!r}")
        self.fn = fn
        self.modalities = index_modalities(modalities, "a FunctionModel")
        self._latent_dim = None if latent_dim is None else int(latent_dim)
        self.networks = nn.ModuleDict(dict(modules or {}))
        self.program_parameters = nn.ParameterDict()
        self._template: MultimodalBatch | None = None  # one row of data, for generation
        self.__name__ = getattr(fn, "__name__", type(self).__name__)
        self.__doc__ = getattr(fn, "__doc__", None) or type(self).__doc__

    # ------------------------------------------------------------------ the contract
    @property
    def bound(self) -> bool:
        """True once :meth:`bind` has traced the program."""
        return self._template is not None

    @property
    def latent_dim(self) -> int:
        if self._latent_dim is None:
            self._latent_dim = int(self.prior_dist().event_shape[-1])
        return self._latent_dim

    def bind(self, batch: MultimodalBatch) -> FunctionModel:
        """Trace the program once on ``batch`` and adopt every ``nn.Parameter`` it registers; returns ``self``.

        Idempotent: a bound model only checks. Raises ``TypeError`` for a ``pyro.param`` tensor that is not
        an ``nn.Parameter`` (declare it in an ``nn.Module`` and register that with ``pyro.module``).
        """
        if self.bound:
            return self
        with torch.no_grad():
            trace = poutine.trace(self.fn).get_trace(batch, beta=1.0)
        owned = {id(p) for p in self.parameters()}
        for name, site in trace.nodes.items():
            if site["type"] != "param" or id(site["value"]) in owned:
                continue
            value = site["value"]
            given = site["args"][1] if len(site["args"]) > 1 else None
            if isinstance(given, nn.Parameter) and given is not value:
                # pyro.module(name, net) found another network's tensor under that name in Pyro's global param
                # store: the program computes with `net`, but the store (and so the trace) holds the old one
                raise ValueError(
                    f"Pyro's param store already holds {name!r} from another network (Pyro keeps parameters by "
                    "name across models), so this model's network would never train: call "
                    "pyro.clear_param_store() before building the model, or register the network under a new name"
                )
            if not isinstance(value, nn.Parameter):
                raise TypeError(
                    f"pyro.param site {name!r} of the function model is not an nn.Parameter, so it cannot be "
                    "trained and checkpointed as part of the model: hold it in an nn.Module (e.g. "
                    "nn.Parameter attributes) and register that module with pyro.module(name, module)"
                )
            self.program_parameters[_key(name)] = value  # the same object: the user's network trains
            owned.add(id(value))
        if LATENT_SITE not in trace.nodes:
            raise ValueError(f"the function model has no latent site {LATENT_SITE!r}; see pyro_mmvae.sites")
        self._owned_ids = owned  # fixed from here on: .to() and load_state_dict keep the Parameter objects
        self._template = batch[:1].to("cpu")
        return self

    def forward(self, batch: MultimodalBatch, beta: float = 1.0, **kwargs):
        """Run the program; the first call binds the model (see :meth:`bind`)."""
        if not self.bound:
            self.bind(batch)
        with _ParamWatch(self._owned_ids):
            return self.fn(batch, beta=beta, **kwargs)

    # ------------------------------------------------------------------ generation from the program
    def _rows(self, n: int) -> MultimodalBatch:
        """``n`` copies of the template row, every modality present, on the model's device."""
        if self._template is None:
            raise RuntimeError("the function model has not seen any data yet: call model.bind(batch) first")
        row = self._template
        device = next((p.device for p in self.parameters()), row.device)
        idx = torch.zeros(n, dtype=torch.long)
        present = {k: torch.ones(n, dtype=torch.bool) for k in row.names}
        return MultimodalBatch({k: v[idx] for k, v in row.data.items()}, present).to(device)

    def prior_dist(self):
        """p(z) read from the program's site ``"z"``: batch shape ``(1,)``, event shape ``(D,)``."""
        with torch.no_grad():
            trace = poutine.trace(self.forward).get_trace(self._rows(1))
        return trace.nodes[LATENT_SITE]["fn"]

    def _observed_dists(self, z: torch.Tensor, names: list[str]) -> dict:
        """The distributions at the observed sites of ``names`` with the program conditioned on ``z (*lead, N, D)``."""
        n = z.shape[-2] if z.dim() >= 2 else 1
        unknown = [m for m in names if m not in self.modalities]
        if unknown:
            raise KeyError(f"unknown modality name(s) {unknown}; this model has {self.names}")
        conditioned = poutine.condition(self.forward, data={LATENT_SITE: z})
        trace = poutine.trace(conditioned).get_trace(self._rows(n))
        return {m: trace.nodes[observed_site(m)]["fn"] for m in names}

    def likelihood_dist(self, name: str, z: torch.Tensor):
        """p(x_name | z) for ``z`` of shape ``(*lead, N, D)``: batch shape ``(*lead, N)``."""
        return self._observed_dists(z, [name])[name]

    def reconstruct(self, z: torch.Tensor, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Decoded means ``name -> (*lead, N, *shape)`` at ``z (*lead, N, D)``."""
        names = self.names if names is None else list(names)
        return {m: d.mean for m, d in self._observed_dists(z, names).items()}

    @torch.no_grad()
    def sample_prior(self, num_samples: int) -> torch.Tensor:
        """``(num_samples, D)`` draws from p(z)."""
        return self.prior_dist().sample((num_samples,))[:, 0]


def multimodal_model(modalities: Iterable[Modality], latent_dim: int | None = None, modules=None):
    """Decorator: ``@multimodal_model(modalities, latent_dim)`` turns a Pyro function into a :class:`FunctionModel`."""

    def wrap(fn: Callable) -> FunctionModel:
        return FunctionModel(fn, modalities, latent_dim, modules)

    return wrap


def as_model(model, guide=None, batch: MultimodalBatch | None = None) -> nn.Module:
    """The library form of ``model``: a module as it is, a plain function wrapped in a :class:`FunctionModel`.

    A plain function declares its modalities with a ``modalities`` attribute (``fn.modalities = [...]``)
    or takes them from ``guide.modalities``; with ``batch``, a function model is bound on it.
    """
    if isinstance(model, nn.Module):
        out = model
    elif callable(model):
        modalities = getattr(model, "modalities", None)
        if modalities is None and guide is not None:
            modalities = getattr(guide, "modalities", None)
        if modalities is None:
            raise TypeError(
                f"the function model {getattr(model, '__name__', model)!r} declares no modalities: decorate it with "
                "@multimodal_model(modalities, latent_dim), wrap it in FunctionModel(fn, modalities), or set "
                "fn.modalities"
            )
        if isinstance(modalities, Mapping):
            modalities = modalities.values()
        out = FunctionModel(model, modalities, getattr(model, "latent_dim", None))
    else:
        raise TypeError(f"model must be an nn.Module or a Pyro function, got {type(model).__name__}")
    if batch is not None and isinstance(out, FunctionModel):
        out.bind(batch)
    return out
