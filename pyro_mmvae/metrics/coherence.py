"""Coherence of generated modalities, judged by classifiers of a shared label. Plain accuracy throughout.

- :func:`subset_coherence`: for every conditioning subset S (default: every non-empty proper subset of
  the modalities) and every modality m outside S, the accuracy C_{S→m} of ``clf_m(generated m)``
  against the true label, with means per subset and per subset size (as the papers report it), in a
  JSON-able :class:`CoherenceReport`. The model generates through a caller-given function
  ``generate(batch, given, targets) -> {target: (B, *shape)}``, so the caller decides the inference
  path (aggregation guide, JNF's experts, subset posteriors sampled by BatchedHMC) and how z is drawn.
- :func:`prior_joint_coherence`: the fraction of unconditional generations (z ~ p(z)) whose
  modalities all receive the same predicted label.
- :func:`conditional_coherence` / :func:`joint_coherence`: the same two quantities on generations
  the caller already holds.
- :func:`enumerate_subsets`: the subsets, ordered by size, then by modality order.

Classifiers are callables ``x (N, *shape) -> labels (N,)`` (e.g. :class:`~pyro_mmvae.metrics.Classifier`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from ..data.batch import MultimodalBatch
from ..data.dataset import iterate_batches
from ..distributed import all_gather_objects, world
from ..errors import InputError, UnknownModalityError, check_int
from ..utils import set_seed, stage_seed

PredictFn = Callable[[torch.Tensor], torch.Tensor]
GenerateFn = Callable[[MultimodalBatch, list, list], Mapping[str, torch.Tensor]]
SubsetKey = tuple[str, ...]


# -------------------------------------------------------------------------------- on given generations
def conditional_coherence(
    classifiers: Mapping[str, PredictFn], generated: Mapping[str, torch.Tensor], labels: torch.Tensor
) -> dict[str, float]:
    """``{name: mean 1[clf_name(generated[name]) == labels]}`` for every generated modality."""
    out = {}
    for name, x in generated.items():
        if name not in classifiers:
            raise KeyError(f"no classifier for modality {name!r}; have {sorted(classifiers)}")
        pred = classifiers[name](x)
        out[name] = (pred.cpu() == labels.cpu()).float().mean().item()
    return out


def _agreement(classifiers: Mapping[str, PredictFn], generated: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Bool ``(N,)``: every generated modality gets the same predicted label."""
    missing = [name for name in generated if name not in classifiers]
    if missing:
        raise UnknownModalityError(f"no classifier for modalities {missing}; have {sorted(classifiers)}")
    preds = [classifiers[name](x).cpu() for name, x in generated.items()]
    if len(preds) < 2:
        raise ValueError("joint coherence needs at least two generated modalities")
    agree = torch.ones_like(preds[0], dtype=torch.bool)
    for p in preds[1:]:
        agree &= p == preds[0]
    return agree


def joint_coherence(classifiers: Mapping[str, PredictFn], generated: Mapping[str, torch.Tensor]) -> float:
    """Fraction of joint generations whose modalities all get the same predicted label."""
    return _agreement(classifiers, generated).float().mean().item()


def prior_joint_coherence(
    sample: Callable[[int], Mapping[str, torch.Tensor]],
    classifiers: Mapping[str, PredictFn],
    num_samples: int = 1000,
    batch_size: int = 500,
) -> float:
    """Joint coherence of ``num_samples`` unconditional generations, drawn ``batch_size`` at a time.

    ``sample(n)`` returns ``{name: (n, *shape)}``: the modalities decoded from n draws z ~ p(z).
    """
    num_samples, batch_size = check_int(num_samples, "num_samples", 1), check_int(batch_size, "batch_size", 1)
    agree = 0
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        agree += int(_agreement(classifiers, sample(n)).sum())
    return agree / num_samples


# ---------------------------------------------------------------------------------------- every subset
def enumerate_subsets(names: Sequence[str], proper: bool = True) -> list[SubsetKey]:
    """The non-empty subsets of ``names`` (only the proper ones when ``proper``), by size then by order.

    Five modalities give 30 proper subsets: 5, 10, 10 and 5 of sizes 1 to 4.
    """
    names = list(names)
    sizes = range(1, len(names) if proper else len(names) + 1)
    return [combo for k in sizes for combo in itertools.combinations(names, k)]


def _key(subset: SubsetKey) -> str:
    return "+".join(subset)


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


@dataclass
class CoherenceReport:
    """Counts behind C_{S→m} (plain accuracy) and their averages.

    ``correct[(S, m)]`` and ``count[(S, m)]``: correctly classified and counted rows, where the rows
    counted for S are those in which every modality of S is present. A pair with no counted row has
    accuracy NaN (``None`` in :meth:`to_dict`) and is left out of the means.
    """

    modalities: tuple[str, ...]
    label: str
    correct: dict[tuple[SubsetKey, str], int] = field(default_factory=dict)
    count: dict[tuple[SubsetKey, str], int] = field(default_factory=dict)
    joint: float | None = None

    def accuracy(self, subset: Iterable[str], target: str) -> float:
        """C_{S→m}: fraction of counted rows whose generated ``target`` is classified as the true label."""
        key = (tuple(subset), target)
        if key not in self.count:
            raise KeyError(f"no coherence measured for {_key(key[0])} -> {target}")
        n = self.count[key]
        return self.correct[key] / n if n else math.nan

    @property
    def subsets(self) -> list[SubsetKey]:
        return list(dict.fromkeys(s for s, _ in self.count))

    def per_pair(self) -> dict[tuple[SubsetKey, str], float]:
        return {key: self.accuracy(*key) for key in self.count}

    def per_subset(self) -> dict[SubsetKey, float]:
        """Mean of C_{S→m} over the targets m of each subset S."""
        pairs = self.per_pair()
        return {s: _mean(v for (s2, _), v in pairs.items() if s2 == s) for s in self.subsets}

    def per_size(self) -> dict[int, float]:
        """Mean over the subsets of each size of their :meth:`per_subset` value (= mean over all (S, m) of
        that size, as every subset of one size has the same number of targets)."""
        by_subset = self.per_subset()
        sizes = sorted({len(s) for s in by_subset})
        return {k: _mean(v for s, v in by_subset.items() if len(s) == k) for k in sizes}

    def per_target_and_size(self) -> dict[str, dict[int, float]]:
        """For each target m and size k: mean of C_{S→m} over the subsets S of size k without m."""
        pairs = self.per_pair()
        targets = list(dict.fromkeys(m for _, m in pairs))
        sizes = sorted({len(s) for s, _ in pairs})
        return {
            m: {k: _mean(v for (s, m2), v in pairs.items() if m2 == m and len(s) == k) for k in sizes} for m in targets
        }

    def mean(self) -> float:
        """Mean of the :meth:`per_size` values (every subset size weighs the same)."""
        return _mean(self.per_size().values())

    def to_dict(self) -> dict:
        """JSON-able summary: per pair ``"m0+m1->m2"`` (accuracy, correct, count), per subset, per size, joint."""

        def num(v):
            return None if isinstance(v, float) and math.isnan(v) else v

        return {
            "metric": "coherence: plain accuracy of the label predicted from generated modalities",
            "label": self.label,
            "modalities": list(self.modalities),
            "per_pair": {
                f"{_key(s)}->{m}": {
                    "accuracy": num(self.accuracy(s, m)),
                    "correct": self.correct[(s, m)],
                    "count": self.count[(s, m)],
                }
                for s, m in self.count
            },
            "per_subset": {_key(s): num(v) for s, v in self.per_subset().items()},
            "per_size": {str(k): num(v) for k, v in self.per_size().items()},
            "per_target_and_size": {
                m: {str(k): num(v) for k, v in d.items()} for m, d in self.per_target_and_size().items()
            },
            "mean_over_sizes": num(self.mean()),
            "joint": self.joint,
        }


def _batch_source(data, batch_size: int) -> Callable[[], Iterable[MultimodalBatch]]:
    """A re-iterable source of batches: one batch, a list of batches, or a dataset (in order)."""
    if isinstance(data, MultimodalBatch):
        return lambda: [data]
    if isinstance(data, list | tuple) and all(isinstance(b, MultimodalBatch) for b in data):
        return lambda: data
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        return lambda: iterate_batches(data, batch_size, shuffle=False)
    batches = list(data)  # a one-shot iterable of batches: kept, as every subset walks over the data again
    if not all(isinstance(b, MultimodalBatch) for b in batches):
        raise InputError("data must be a MultimodalBatch, an iterable of them or a dataset")
    return lambda: batches


def _check_subsets(subsets, names: list[str], targets: list[str]) -> list[SubsetKey]:
    out = []
    for subset in subsets:
        subset = (subset,) if isinstance(subset, str) else tuple(subset)
        unknown = [n for n in subset if n not in names]
        if not subset or unknown:
            raise InputError(f"subset {subset}: must be non-empty names among {names}; unknown: {unknown}")
        if not [m for m in targets if m not in subset]:
            raise InputError(f"subset {subset} leaves no target modality among {targets}")
        out.append(tuple(n for n in names if n in subset))  # modality order, whatever order was given
    return list(dict.fromkeys(out))


def _score_batch(report, generate, classifiers, batch, subset, targets, label, device) -> None:
    """Generate ``targets`` from ``subset`` on the rows of ``batch`` where all of ``subset`` is present."""
    rows = torch.stack([batch.present[n] for n in subset]).all(0)
    if not rows.any():
        return
    given = batch[rows] if not rows.all() else batch
    # the generator sees only S: every other modality is marked missing and zeroed
    given = given.with_missing([n for n in given.names if n not in subset])
    if device is not None:
        given = given.to(device)
    y = given.labels[label].reshape(-1).cpu()
    out = generate(given, list(subset), list(targets))
    for m in targets:
        x = out.get(m) if isinstance(out, Mapping) else None
        if not isinstance(x, torch.Tensor) or x.shape[0] != len(y):
            got = "nothing" if x is None else (tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__)
            raise InputError(f"generate(given={list(subset)}) must return {m!r} as a ({len(y)}, ...) tensor, got {got}")
        pred = classifiers[m](x).reshape(-1).cpu()
        report.correct[(subset, m)] += int((pred == y).sum())
        report.count[(subset, m)] += len(y)


def subset_coherence(
    generate: GenerateFn,
    classifiers: Mapping[str, PredictFn],
    data,
    label: str = "digit",
    subsets: Iterable[Iterable[str]] | None = None,
    targets: Iterable[str] | None = None,
    batch_size: int = 256,
    device=None,
    sample_prior: Callable[[int], Mapping[str, torch.Tensor]] | None = None,
    num_prior_samples: int = 1000,
    progress: bool = True,
    seed: int | None = None,
) -> CoherenceReport:
    """Conditional coherence C_{S→m} for every subset S and every target m ∉ S (plain accuracy).

    Args:
        generate: ``generate(batch, given, targets) -> {target: (B, *shape)}``, the model's own
            conditional generation of ``targets`` from the modalities ``given`` of ``batch``.
        classifiers: ``{modality: callable x (N, *shape) -> labels (N,)}``, one per target.
        data: a ``MultimodalBatch``, a list/iterable of them, or a dataset (batched in order by
            :func:`~pyro_mmvae.data.iterate_batches` with ``batch_size``); labels in ``labels[label]``.
        subsets: the conditioning subsets (default: every non-empty proper subset of the modalities,
            :func:`enumerate_subsets`).
        targets: the modalities to generate and judge (default: every modality); each needs a classifier.
        device: where batches are moved before ``generate`` (default: left where they are).
        sample_prior: optional ``sample(n) -> {modality: (n, *shape)}`` of unconditional generations;
            when given, ``report.joint`` is their :func:`prior_joint_coherence` over ``num_prior_samples``.
        progress: a tqdm bar over the subsets.
        seed: when given, the global RNGs are seeded before each (subset, batch) with a seed derived
            from ``seed``, the subset and the batch index, so each unit's generations do not depend on
            what ran before it. Under ``torchrun`` (:mod:`pyro_mmvae.distributed`) the units are then
            split over the processes and the counts summed: every process returns the same report, equal
            to that of one process with the same seed.

    Missing modalities: for subset S only the rows in which EVERY modality of S is present are counted
    (whether the target itself is present does not matter: the true label is what is compared). The
    batch handed to ``generate`` holds exactly those rows, with every modality outside S marked
    missing and zeroed, so a generator cannot read the targets it is asked to produce.
    """
    source = _batch_source(data, check_int(batch_size, "batch_size", 1))
    first = next(iter(source()), None)
    if first is None:
        raise InputError("subset_coherence: the data hold no batch")
    names = first.names
    if label not in first.labels:
        raise InputError(f"the batches have no label {label!r}; their labels are {sorted(first.labels)}")
    targets = list(names if targets is None else targets)
    unknown = [m for m in targets if m not in names]
    if unknown:
        raise UnknownModalityError(f"target modalities {unknown} are not in the data; it has {names}")
    missing = [m for m in targets if m not in classifiers]
    if missing:
        raise UnknownModalityError(f"no classifier for target modalities {missing}; have {sorted(classifiers)}")
    subsets = _check_subsets(enumerate_subsets(names) if subsets is None else subsets, names, targets)

    w = world()
    if w.distributed and seed is None:
        raise InputError("subset_coherence across processes needs a seed (the same one on every process)")
    report = CoherenceReport(tuple(names), label)
    bar = tqdm(subsets, desc="coherence", unit="subset", disable=not progress or not w.is_main)
    unit = 0
    for subset in bar:
        bar.set_postfix(given=_key(subset))
        subset_targets = [m for m in targets if m not in subset]
        for m in subset_targets:
            report.correct[(subset, m)] = report.count[(subset, m)] = 0
        with torch.no_grad():
            for i, batch in enumerate(source()):
                unit += 1
                if (unit - 1) % w.size != w.rank:
                    continue
                if seed is not None:
                    set_seed(stage_seed(int(seed), f"coherence/{_key(subset)}/{i}"))
                _score_batch(report, generate, classifiers, batch, subset, subset_targets, label, device)
    bar.close()
    if w.distributed:
        parts = all_gather_objects((dict(report.correct), dict(report.count)))
        for key in report.count:
            report.correct[key] = sum(p[0][key] for p in parts)
            report.count[key] = sum(p[1][key] for p in parts)
    if sample_prior is not None:
        with torch.no_grad():
            report.joint = prior_joint_coherence(sample_prior, classifiers, num_prior_samples, batch_size)
    return report
