"""A training step's loss and gradients as one compiled graph: ``fit(..., compile=True)``.

A small model spends most of an eager training step on per-operation overhead: Python, Pyro's
handler stack and one autograd node per tensor operation (Table 3 of the permutation-invariant paper:
~1,800 operations per step for a PoE whose matrix products take under 1 ms). Here the objective's
``differentiable_loss`` — the same Pyro ELBO, run by Pyro — is traced once per batch signature into a
graph of tensor operations, forward and backward together (``make_fx`` of ``torch.func.grad_and_value``
on fake tensors, taking one flat list of tensors), and Inductor compiles that graph. Pyro's programs run
only while tracing; each step then executes the graph, which also applies ``fit``'s element-wise
gradient treatment (NaN → 0, clamping to ±``grad_clip_value``). Adam, norm clipping and ``fit``'s check
of every step's loss stay as they are.

What a traced step requires, checked when its graph is built (a :class:`StepCompileError` says what
is wrong; ``fit`` then warns once and trains the run eagerly):

- no Python decision on tensor values inside model, guide or objective (``if x.any()``, ``.item()``):
  fake tensors have no values, so such code fails to trace instead of being frozen into the graph;
- every parameter and buffer the loss reads is an attribute of the model or the guide: a network held
  elsewhere (a plain Pyro function model's, Pyro's param store) would be frozen into the graph;
- the loss updates no buffer, in place (e.g. BatchNorm in train mode) or by assigning a new tensor;
- loss keyword arguments hold no tensors.

Everything else the loss reads from Python is frozen when a graph is traced: attribute values of
objective, model and guide (``objective.alpha``, a mask sampler's kind) and any NumPy or Python-``random``
draw. Change them between runs, not during one.

Random draws run inside the graph in the eager order, from torch's global generator (Inductor's
``fallback_random``): a compiled step draws what the eager step draws and equals it up to floating-point
reduction order. A resumed run continues the same random stream; its first step runs eagerly, so it
matches the uninterrupted compiled run up to that reduction order. One graph is built per
signature: names, shapes and dtypes of the batch's tensors, the loss keyword values (β as a Python
number is one of them) and the modules' train/eval modes. Compiling takes seconds to a minute, so
``fit`` compiles a β schedule's epochs only from its final β on, and after ``max_graphs`` graphs
further signatures run eagerly, with one warning. A batch in which some modality is observed in no
row runs eagerly: the objectives skip such a modality (while tracing, ``MultimodalBatch.observed_names``
answers under the guarantee that none is). Inductor needs a C++ compiler on CPU (Triton on CUDA).
"""

from __future__ import annotations

import math
import re
import traceback
import warnings
from collections.abc import Mapping

import pyro
import torch
from torch.func import functional_call, grad_and_value
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._pytree import tree_leaves

from ..data.batch import MultimodalBatch, is_tracing_step, trace_batch, tracing_step
from ..data.validation import declared_modalities, mark_validated, validate_batch
from ..errors import PyroMMVAEError
from .parameters import ModelGuidePair

MAX_GRAPHS = 8
_ZEROS = {torch.ops.aten.zeros_like.default}
_VALUE_DEPENDENT = {
    "GuardOnDataDependentSymNode",
    "DataDependentOutputException",
    "DynamicOutputShapeException",
    "UserError",  # torch's wrapper of the data-dependent errors in some versions
}
_TREATMENT = {torch.ops.aten.nan_to_num.default, torch.ops.aten.clamp.default}
_LIBRARY_FRAME = re.compile(r"[/\\\\](torch|pyro|functorch)[/\\\\]")


def _culprit(err: Exception) -> str:
    """The innermost frame of the traceback outside torch and Pyro: the code that read a tensor value."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not _LIBRARY_FRAME.search(f.filename)]
    return f" at {frames[-1].filename}:{frames[-1].lineno} ({frames[-1].name})" if frames else ""


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


class StepCompileError(PyroMMVAEError, RuntimeError):
    """The training step cannot be traced or compiled faithfully (the message says why)."""


class CompiledGradients:
    """``objective.differentiable_loss(model, guide, batch, **loss_kwargs)`` and its gradients, compiled.

    Args:
        objective, model, guide: as given to :func:`~pyro_mmvae.train.fit`.
        trained: the parameters to differentiate (the others, and every buffer, are graph inputs
            without gradients).
        max_graphs: signatures compiled at most; later ones return ``None`` (the caller runs eagerly).
        zero_nan_grads, grad_clip_value: as in :class:`~pyro_mmvae.train.FitConfig`, applied to the
            gradients inside the graph (what ``fit``'s ``clip_gradients`` does to them eagerly).

    Calling it with a batch (validated as the objective validates it: missing rows zero-filled)
    writes ``p.grad`` of every trained parameter and returns the loss (a detached 0-dim tensor), or
    returns ``None`` for a signature beyond ``max_graphs`` and for a batch in which some modality is
    observed in no row (the objectives skip such a modality, a decision on values: those run eagerly).
    """

    def __init__(
        self,
        objective,
        model: torch.nn.Module,
        guide: torch.nn.Module,
        trained,
        max_graphs: int = MAX_GRAPHS,
        zero_nan_grads: bool = False,
        grad_clip_value: float | None = None,
    ):
        self.zero_nan_grads, self.grad_clip_value = bool(zero_nan_grads), grad_clip_value
        self.pair = ModelGuidePair(model, guide, objective)
        if not isinstance(objective, torch.nn.Module):
            # networks the objective holds (JNFLoss's frozen joint encoder), also in lists, tuples and dicts:
            # graph inputs like the others', never constants
            held = [m for m in tree_leaves(vars(objective)) if isinstance(m, torch.nn.Module)]
            self.pair.objective_modules = torch.nn.ModuleList(held)
        self.modalities = declared_modalities(model, guide)
        names = {id(p): n for n, p in self.pair.named_parameters()}
        self.trained = {names[id(p)]: p for p in trained}
        trained_ids = {id(p) for p in self.trained.values()}
        # the optimizer holds these same tensors: fit never replaces them during a run
        self._others = {n: p for n, p in self.pair.named_parameters() if id(p) not in trained_ids}
        self._others.update(self.pair.named_buffers())
        self._modules = list(self.pair.modules())
        self.max_graphs = int(max_graphs)
        self.graphs: dict[tuple, object] = {}
        self._warned = False

    # ------------------------------------------------------------------ inputs
    def _flat_inputs(self, batch: MultimodalBatch, layout) -> list[torch.Tensor]:
        """Trained tensors, then the other parameters and buffers, then the batch's tensors in ``layout`` order."""
        groups = {"data": batch.data, "present": batch.present, "labels": batch.labels}
        return [
            *(p.detach() for p in self.trained.values()),
            *(t.detach() for t in self._others.values()),
            *(groups[group][name].contiguous() for group, name in layout),  # the graph is built for these strides
        ]

    def _signature(self, batch: MultimodalBatch, loss_kwargs: Mapping) -> tuple:
        tensors = tuple(
            (group, name, tuple(t.shape), t.dtype, str(t.device))
            for group, d in (("data", batch.data), ("present", batch.present), ("labels", batch.labels))
            for name, t in d.items()
        )
        held = [k for k, v in loss_kwargs.items() if any(isinstance(t, torch.Tensor) for t in tree_leaves(v))]
        if held:  # a graph would hold the tensor's values of its first step as constants
            raise StepCompileError(
                f"compile=True: loss keyword argument(s) {held} hold tensors; a graph would keep their first values"
            )
        kwargs = tuple(sorted((k, repr(v)) for k, v in loss_kwargs.items()))
        modes = tuple(m.training for m in self._modules)
        return tensors, kwargs, modes

    # ------------------------------------------------------------------ building
    def _flat_loss(self, loss_kwargs: dict, layout):
        """``f(*flat inputs) -> [*gradients of the trained tensors, loss]``, the function that is traced."""
        pair, modalities = self.pair, self.modalities
        trained_names, other_names = list(self.trained), list(self._others)
        n, m = len(trained_names), len(other_names)
        zero_nan, clip = self.zero_nan_grads, self.grad_clip_value

        def treated(g):  # as clip_gradients: NaN -> 0 (infinities kept), then the element-wise clamp
            if zero_nan:
                g = torch.nan_to_num(g, nan=0.0, posinf=math.inf, neginf=-math.inf)
            return g if clip is None else g.clamp(-clip, clip)

        def loss(trained, others, tensors):
            groups = {"data": {}, "present": {}, "labels": {}}
            for (group, name), t in zip(layout, tensors):
                groups[group][name] = t
            batch = mark_validated(MultimodalBatch(**groups), modalities)  # validated by the caller
            if is_tracing_step():  # the step is only traced on batches observing every modality in some row
                trace_batch(batch)
            return functional_call(pair, (trained, others), (batch, loss_kwargs), tie_weights=True)

        def flat(*xs):
            trained = dict(zip(trained_names, xs[:n]))
            grads, value = grad_and_value(loss)(trained, dict(zip(other_names, xs[n : n + m])), xs[n + m :])
            return [*(treated(grads[k]) for k in trained_names), value]

        return flat

    def _build(self, batch: MultimodalBatch, loss_kwargs: dict, layout):
        inputs = self._flat_inputs(batch, layout)
        try:
            with torch.random.fork_rng(devices=[]), pyro.validation_enabled(False), tracing_step():
                graph = make_fx(self._flat_loss(loss_kwargs, layout), tracing_mode="fake", _allow_non_fake_inputs=True)(
                    *inputs
                )
        except StepCompileError:
            raise
        except Exception as err:
            hint = ""
            if type(err).__name__ in _VALUE_DEPENDENT:
                hint = (
                    ". A traced step may not read tensor values in Python (if x.any(), .item(), float(x)) nor "
                    "make shapes depend on them (boolean-mask indexing, nonzero) in model, guide or objective"
                )
            raise StepCompileError(
                f"compile=True could not trace the training step: {_first_line(err)}{_culprit(err)}{hint}"
            ) from err
        self._check_constants(graph)
        self._check_no_input_mutation(graph)
        try:
            compiled = _compile(graph, inputs)
        except Exception as err:
            raise StepCompileError(
                f"compile=True: Inductor could not compile the training step ({_first_line(err)}); it needs a C++ "
                "compiler on CPU and Triton on CUDA"
            ) from err
        return compiled, self._unused(graph)

    def _unused(self, graph) -> list[bool]:
        """Per trained tensor: whether the loss does not depend on it (its gradient is a fresh zero tensor).

        Eager autograd leaves such a gradient ``None``, which optimizers skip (no Adam moment decay, no
        weight decay); the compiled step keeps that.
        """
        output = next(n for n in graph.graph.nodes if n.op == "output")
        placeholders = [n for n in graph.graph.nodes if n.op == "placeholder"]
        unused = []
        for g, own in zip(output.args[0][: len(self.trained)], placeholders):
            while getattr(g, "op", None) == "call_function" and g.target in _TREATMENT:
                g = g.args[0]  # through the graph's own NaN zeroing and clamping
            # zeros_like of the parameter itself; a zero that flows through the loss (round, sign) is a gradient
            unused.append(getattr(g, "op", None) == "call_function" and g.target in _ZEROS and g.args[0] is own)
        return unused

    def _check_constants(self, graph) -> None:
        """A model or guide tensor frozen into the graph as a constant would never change: refuse it."""
        own = {}
        for name, t in [*self.pair.named_parameters(), *self.pair.named_buffers()]:
            own.setdefault(t.untyped_storage().data_ptr(), name)
        for node in graph.graph.nodes:
            if node.op != "get_attr":
                continue
            value = getattr(graph, node.target, None)
            if not isinstance(value, torch.Tensor) or value.numel() == 0:
                continue
            name = own.get(value.untyped_storage().data_ptr())
            if name is not None or value.requires_grad:
                what = f"model/guide tensor {name!r}" if name else "a tensor that requires grad"
                raise StepCompileError(
                    f"compile=True: the loss reads {what} other than as an attribute of the model or guide "
                    "(e.g. a network called by a plain Pyro function model, or a pyro.param of the param store), "
                    "so the compiled step would freeze it (hold the network in an nn.Module model to compile)"
                )

    @staticmethod
    def _check_no_input_mutation(graph) -> None:
        inputs = {n for n in graph.graph.nodes if n.op == "placeholder"}
        for node in graph.graph.nodes:
            schema = getattr(node.target, "_schema", None)
            if node.op != "call_function" or schema is None or not schema.is_mutable:
                continue
            for arg, spec in zip(node.args, schema.arguments):
                if spec.alias_info is not None and spec.alias_info.is_write and arg in inputs:
                    raise StepCompileError(
                        f"compile=True: the loss updates a model/guide buffer in place ({node.target}), e.g. "
                        "BatchNorm statistics in train mode"
                    )

    # ------------------------------------------------------------------ the step
    def __call__(self, batch: MultimodalBatch, loss_kwargs: Mapping) -> torch.Tensor | None:
        batch = validate_batch(batch, self.modalities)  # at once for a batch fit has validated
        if not all(bool(p.any()) for p in batch.present.values()):
            return None  # objectives skip a modality observed in no row: such a rare batch runs eagerly
        key = self._signature(batch, loss_kwargs)
        layout = [(group, name) for group, name, *_ in key[0]]
        first = key not in self.graphs
        if first:
            if len(self.graphs) >= self.max_graphs:
                if not self._warned:
                    warnings.warn(
                        f"compile=True: {self.max_graphs} step graphs are compiled already (one per batch shape, "
                        "loss keyword values such as beta, and train/eval modes); further ones run eagerly",
                        stacklevel=2,
                    )
                    self._warned = True
                return None
            self._check_buffers()
            self.graphs[key] = self._build(batch, dict(loss_kwargs), layout)
        compiled, unused = self.graphs[key]
        rng = torch.get_rng_state() if first else None
        try:
            *grads, loss = compiled(*self._flat_inputs(batch, layout))
        except Exception as err:
            if not first or is_nan_sampling_error(err):
                raise  # a NaN the networks produced: fit reports it as a non-finite loss
            del self.graphs[key]
            torch.set_rng_state(rng)  # the eager step that follows draws what it would have drawn
            raise StepCompileError(
                f"compile=True: the compiled training step failed on its first call ({_first_line(err)})"
            ) from err
        seen = set()
        for p, g, skip in zip(self.trained.values(), grads, unused):
            if skip:
                p.grad = None
                continue
            ptr = g.untyped_storage().data_ptr()
            if ptr in seen or g.stride() != p.stride():  # one tensor for two parameters, or a broadcast view:
                g = g.clone(memory_format=torch.contiguous_format)  # eager autograd gives each its own
            seen.add(ptr)
            p.grad = g
        return loss.detach()

    def _check_buffers(self) -> None:
        """A buffer replaced since construction (assigned in ``forward``, e.g. a running average) would be
        frozen into a graph; refuse it."""
        current = dict(self.pair.named_buffers())
        for name, b in self._others.items():
            if name in current and current[name] is not b:
                raise StepCompileError(
                    f"compile=True: buffer {name!r} was replaced by a new tensor (assigned in forward, e.g. a running "
                    "average); a graph would never update it"
                )


def is_nan_sampling_error(err: Exception) -> bool:
    """A categorical draw from NaN probabilities (the networks diverged), which fit reports as such."""
    return isinstance(err, RuntimeError) and "probability tensor contains" in str(err)


def _compile(graph, inputs: list[torch.Tensor]):
    """Inductor's compiled ``graph`` (random draws as in eager mode): directly, which skips the per-call
    guards of ``torch.compile`` (~0.1 ms, a tenth of a small model's step), else through ``torch.compile``."""
    try:
        from torch._inductor import config as inductor_config
        from torch._inductor.compile_fx import compile_fx
    except (ImportError, AttributeError):  # an Inductor without this entry point: the public one
        return torch.compile(graph, backend="inductor", dynamic=False, options={"fallback_random": True})
    with inductor_config.patch(fallback_random=True):
        return compile_fx(graph, inputs)
