"""The one training loop every model uses: device, seeding, AMP, checkpoints, resume, budget,
divergence checks and progress.

A model supplies its networks, optimisers and a ``step`` function that does one optimisation step
on a batch and returns its losses (a GAN alternates two optimisers inside its step, a diffusion
model adds noise). Everything else is here, once.

Checkpoints hold only tensors and plain numbers; they are loaded with ``weights_only=True`` so a
checkpoint cannot execute code. A retried training task finds the last checkpoint of its run and
continues from that step, with the same batch order and random state as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import random
import secrets
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from genai_pipeline.config import PrivacySpec, TrainSpec
from genai_pipeline.cpus import CoreWatch, available_cores
from genai_pipeline.datasets.row_groups import RowGroups
from genai_pipeline.errors import ConfigError, TrainingDiverged
from genai_pipeline.privacy.dp import Calibration, PrivateSGD, StatisticsBudget, calibrate, default_delta
from genai_pipeline.storage import Storage

log = logging.getLogger(__name__)

StepFn = Callable[[tuple[torch.Tensor, ...]], Mapping[str, torch.Tensor | float]]
EvalFn = Callable[[tuple[torch.Tensor, ...]], torch.Tensor | float]


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a config error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was requested but no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


#: when training first measures how many cores other processes leave it (:class:`CoreWatch`), and
#: how often again
FIRST_CHECK_SECONDS, RECHECK_SECONDS = 1.0, 5.0


class CpuThreads:
    """Torch's threads on a CPU as many as the cores other processes leave this one free, at most
    those it may use (:func:`available_cores`) and what was set before: at most those from the
    start, then measured after :data:`FIRST_CHECK_SECONDS` of training and every
    :data:`RECHECK_SECONDS` after (:meth:`adjust`). On a GPU, or where nothing can be measured,
    they stay as they are. Threads waiting on a core another process holds stall the rest
    (BENCHMARKS.md "Shared CPUs")."""

    def __init__(self, device: torch.device):
        self.before = torch.get_num_threads()
        self.watch = CoreWatch() if device.type == "cpu" else None
        self.limit = min(self.before, available_cores())
        if self.watch is not None and self.limit != self.before:
            torch.set_num_threads(self.limit)
        self.due = time.monotonic() + FIRST_CHECK_SECONDS

    def adjust(self, now: float) -> None:
        """Measure again when due, and set the threads when the free cores changed."""
        if self.watch is None or now < self.due:
            return
        self.due = now + RECHECK_SECONDS
        threads = self.watch.threads(self.limit)
        if threads is not None and threads != torch.get_num_threads():
            log.info("training on %d thread(s): the cores other processes leave free", threads)
            torch.set_num_threads(threads)

    def restore(self) -> None:
        torch.set_num_threads(self.before)


def _on_free_cores(loop: Callable[..., FitReport]) -> Callable[..., FitReport]:
    """``loop`` (:func:`fit_loop`) given its :class:`CpuThreads`, the threads restored after it."""

    @functools.wraps(loop)
    def run(**kwargs: Any) -> FitReport:
        threads = CpuThreads(kwargs["device"])
        try:
            return loop(**kwargs, threads=threads)
        finally:
            threads.restore()

    return run


def seed_everything(seed: int) -> None:
    """Seed every generator a model may touch, so the same job and seed give the same result."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (no loss scaling needed); full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def maybe_compile(module: nn.Module, train: TrainSpec, device: torch.device) -> nn.Module:
    """``torch.compile`` when asked for and worthwhile (CUDA); the module itself otherwise."""
    if train.compile and device.type == "cuda":
        return torch.compile(module)  # type: ignore[return-value]
    return module


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a tensor, through pinned memory when the target is a GPU."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


#: Adam's fused kernel: one pass over all the parameters a step instead of several kernels per
#: tensor; the optimiser's step 3× faster on CPU, the autoregressive family's epochs on Adult ~20%
#: faster (BENCHMARKS.md "Throughput per step"); a switch for that benchmark's "before"
FUSED_ADAM = True


def adam(params: Any, **options: Any) -> torch.optim.Adam:
    """``torch.optim.Adam`` with :data:`FUSED_ADAM`."""
    return torch.optim.Adam(params, fused=FUSED_ADAM, **options)


def adamw(params: Any, **options: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with :data:`FUSED_ADAM`."""
    return torch.optim.AdamW(params, fused=FUSED_ADAM, **options)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy that is never trained directly: the moving average that samples."""
    copy = deepcopy(module).eval()
    for parameter in copy.parameters():
        parameter.requires_grad_(False)
    return copy


@torch.no_grad()
def update_ema(average: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, decay: float) -> None:
    """Move ``average`` towards ``model``, with a warm-up so early weights are not averaged in.

    The step count is the optimiser's (part of its checkpointed state), so a resumed run continues
    the same schedule; the decay is ``min(decay, (1 + step) / (10 + step))``.
    """
    first = next(p for p in model.parameters() if p.requires_grad)
    state = optimizer.state.get(first, {})
    step = float(state["step"]) if "step" in state else 0.0
    weight = 1 - min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(average.parameters()), list(model.parameters()), weight)


def check_gradients(parameters: Any, *, max_norm: float, name: str) -> float:
    """Clip gradients and fail fast when their norm is no longer finite."""
    norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
    if not math.isfinite(norm):
        raise TrainingDiverged(f"{name}: gradient norm became {norm}; lower the learning rate")
    return norm


class CheckpointStore:
    """The latest training checkpoint of a run, in the run's storage (local or S3)."""

    def __init__(self, storage: Storage, prefix: str):
        self.storage = storage
        self.prefix = prefix.rstrip("/")
        self.rel = f"{self.prefix}/latest.pt"

    def child(self, name: str) -> CheckpointStore:
        """The store of a part trained on its own (a text column's model) within the same run."""
        return CheckpointStore(self.storage, f"{self.prefix}/{name}")

    def save(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.storage.write_bytes(self.rel, buffer.getvalue())

    def load(self) -> dict[str, Any] | None:
        """The checkpoint, or None. One that cannot be loaded (not plain tensors and numbers, so
        refused without being run; or damaged) is removed with a warning: it would otherwise fail
        every later run of the same data, config and code, whose checkpoints live here."""
        if not self.storage.exists(self.rel):
            return None
        blob = self.storage.read_bytes(self.rel)  # a storage failure is raised (and retried) as such
        try:
            return torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
        except Exception as exc:
            log.warning(
                "%s: not a loadable checkpoint (%s): removed, training starts over",
                self.storage.url_of(self.rel),
                type(exc).__name__,
            )
            self.storage.delete([self.rel])
            return None


@dataclass
class FitReport:
    """What training did: for logs, manifests and benchmarks."""

    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    samples_per_second: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)
    stopped: str = "epochs"
    resumed_from_step: int = 0
    device: str = "cpu"
    validation_loss: float | None = None
    #: ``[seconds, validation loss]`` after each epoch trained in this call (seconds counting a
    #: resumed run's earlier ones): how fast a loss is reached, for benchmarks and tuning
    curve: list[list[float]] = field(default_factory=list)
    #: with ``train.privacy``: the ε and δ spent (statistics and DP-SGD together) and how
    privacy: dict[str, Any] | None = None
    #: per text column, how its language model trained (``models.text``)
    text: dict[str, dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PrivacyPlan:
    """One model's differential-privacy budget (``train.privacy``) for a table of ``rows`` rows: the
    noise of its statistics (``histograms`` of them, :class:`StatisticsBudget`) and of DP-SGD,
    calibrated together (:func:`calibrate`) so that both composed spend the job's ε."""

    spec: PrivacySpec
    rows: int
    delta: float
    calibration: Calibration
    statistics: StatisticsBudget
    #: what the statistics released (the model's fitted state, JSON-able), saved with every
    #: checkpoint so that a resumed training reuses it: released again with fresh noise, it would
    #: be a second release of the same rows that the accountant never counted, and the weights
    #: would go on training on an encoding they were not started on
    released: dict[str, Any] | None = None
    #: the checkpoint :meth:`resumed` read, handed to the training loop (:meth:`checkpoint`) so that
    #: a resumed training reads it once (on S3, one GET of what may be a large file)
    _read: dict[str, Any] | None = None

    @classmethod
    def of(cls, train: TrainSpec, *, rows: int, histograms: float, selections: int) -> PrivacyPlan | None:
        """The plan for ``train.epochs`` of batches of ``train.batch_size`` from ``rows`` rows;
        ``selections``: how many of the histograms are category sets (thresholded)."""
        spec = train.privacy
        if spec is None:
            return None
        delta = spec.delta or default_delta(rows)
        sample_rate = min(train.batch_size / rows, 1.0)
        calibration = calibrate(
            epsilon=spec.epsilon,
            delta=delta,
            sample_rate=sample_rate,
            steps=max(1, round(train.epochs / sample_rate)),
            statistics_share=spec.statistics_share,
            accountant=spec.accountant,
        )
        statistics = StatisticsBudget.of(
            calibration, histograms=histograms, delta=delta, selections=selections
        )
        return cls(spec, rows, delta, calibration, statistics)

    def resumed(self, checkpoints: CheckpointStore | None) -> dict[str, Any] | None:
        """What a killed private training had released, from its checkpoint (None: none to resume)."""
        self._read = checkpoints.load() if checkpoints is not None else None
        saved = self._read
        return json.loads(saved["statistics"]) if saved is not None and "statistics" in saved else None

    def checkpoint(self, checkpoints: CheckpointStore | None) -> dict[str, Any] | None:
        """The checkpoint to resume from: the one :meth:`resumed` read (handed over once), else the
        store's."""
        saved, self._read = self._read, None
        if saved is None and checkpoints is not None:
            saved = checkpoints.load()
        return saved

    def sgd(self, train: TrainSpec, *, rows: int | None = None) -> PrivateSGD:
        """DP-SGD over ``rows`` (default: the table's), its noise calibrated with the statistics' (or
        as given) and its ε counted on top of theirs; its noise is seeded from the operating
        system, never from the job (see :class:`StatisticsBudget`)."""
        return PrivateSGD(
            epsilon=self.spec.epsilon,
            delta=self.calibration.accounted_delta,
            max_grad_norm=self.spec.max_grad_norm,
            noise_multiplier=self.spec.noise_multiplier or self.calibration.sgd_noise,
            rows=rows or self.rows,
            batch_size=train.batch_size,
            epochs=train.epochs,
            accountant=self.spec.accountant,
            seed=secrets.randbits(63),
            released=self.calibration.released(),
        )

    def report(self, private: PrivateSGD) -> dict[str, Any]:
        """What was spent, statistics and DP-SGD composed, and the noise that bought it."""
        return {
            "epsilon": private.epsilon_spent(),
            "delta": self.delta,
            "target_epsilon": self.spec.epsilon,
            "statistics_noise_multiplier": self.calibration.statistics_noise,
            "statistics_sigma": self.statistics.sigma,
            "statistics_histograms": self.statistics.used,
            "noise_multiplier": private.noise_multiplier,
            "max_grad_norm": private.max_grad_norm,
            "sample_rate": private.sample_rate,
            "steps": private.steps,
            "accountant": self.spec.accountant,
        }


class _Objective(nn.Module):
    """A batch loss as a module holding the networks it trains, so that ``torch.func`` can put a
    row's copy of their parameters in place for the whole loss, not only inside one forward (a
    VAE's loss reads its sigma outside the forward pass)."""

    def __init__(self, networks: Mapping[str, nn.Module], loss: Callable[..., torch.Tensor]):
        super().__init__()
        self.networks = nn.ModuleDict(networks)
        self.loss = loss

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.loss(*batch)


def private_step(
    private: PrivateSGD,
    networks: Mapping[str, nn.Module],
    loss: Callable[..., torch.Tensor],
    batch: tuple[torch.Tensor, ...],
    optimizer: torch.optim.Optimizer,
) -> torch.Tensor:
    """One DP-SGD step: ``loss(*batch)`` is the family's mean loss over a batch (random draws inside
    are fine: every row gets its own); each row's gradient is its loss on a batch of one, clipped
    and noised by ``private``. Returns the batch's mean loss, for the log."""
    objective = _Objective(networks, loss)

    def per_row(
        params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], *row: torch.Tensor
    ) -> torch.Tensor:
        return torch.func.functional_call(objective, (params, buffers), tuple(item[None] for item in row))

    with warnings.catch_warnings():  # per-row gradients of embedding bags or attention: slower, not wrong
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
        return torch.tensor(private.step(objective, per_row, batch, optimizer))


def optimise(
    loss: Callable[..., torch.Tensor],
    batch: tuple[torch.Tensor, ...],
    optimizer: torch.optim.Optimizer,
    *,
    networks: Mapping[str, nn.Module],
    private: PrivateSGD | None,
    max_norm: float,
    name: str,
) -> torch.Tensor:
    """One optimisation step of ``networks`` on ``loss(*batch)`` (a mean over the batch): a DP-SGD
    step with ``private`` (:func:`private_step`), else backward, the gradient check and clipping
    at ``max_norm``, and the optimiser's step. Returns the loss, detached, for the log."""
    if private is not None:
        return private_step(private, networks, loss, batch, optimizer)
    value = loss(*batch)
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    parameters = [parameter for network in networks.values() for parameter in network.parameters()]
    check_gradients(parameters, max_norm=max_norm, name=name)
    optimizer.step()
    return value.detach()


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of shuffled index batches; a short last batch is dropped when there are others."""
    order = torch.randperm(n, generator=generator)
    batch_size = min(batch_size, n)
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


#: the rows a streamed training shuffles together at most: row groups are read this many at a time
STREAM_BUFFER_ROWS = 256 * 1024
#: the held-out rows a streamed training's validation loss is measured on, at most
STREAM_VALIDATION_ROWS = 50_000
#: rows a streamed training encodes at once: the encoded matrix of a whole row group (one-hot
#: categories, before the family's tensors) took ~150 MB of the peak on Adult
STREAM_ENCODE_ROWS = 16_384

Tensors = tuple[torch.Tensor, ...]


def row_count(data: Tensors | StreamedRows) -> int:
    """The rows training goes through an epoch of."""
    return data.rows if isinstance(data, StreamedRows) else len(data[0])


def _joined(parts: Sequence[Tensors]) -> Tensors:
    return tuple(torch.cat(items) for items in zip(*parts, strict=True)) if parts else ()


class StreamedRows:
    """Training rows read from a staged table's row groups (:class:`RowGroups`) a few at a time and
    made the family's tensors as they are read (``tensors``: a table of rows to what the training
    step takes), so that memory does not grow with the rows (``train.in_memory_rows``).

    An epoch visits the groups in a seeded order, reads about :data:`STREAM_BUFFER_ROWS` rows of
    them at a time and yields that buffer's rows in a seeded shuffle, in batches (a remainder
    shorter than a batch waits for another epoch's shuffle). The epoch's draws all come from the
    training loop's generator before its first batch, so a resumed training skips to its batch
    without reading the buffers it skips and goes on with the same batches.

    With ``holdout`` (the validation share), each group holds out the same seeded share of its
    rows in every epoch; the validation loss is measured on the first
    :data:`STREAM_VALIDATION_ROWS` of them."""

    def __init__(
        self,
        groups: RowGroups,
        tensors: Callable[[pa.Table], Tensors],
        *,
        seed: int,
        holdout: float | None = None,
    ):
        self.groups, self.tensors, self.seed, self.holdout = groups, tensors, seed, holdout
        self.per_buffer = max(1, STREAM_BUFFER_ROWS // max(max(groups.sizes, default=1), 1))
        self.kept = [int((~self._held(group)).sum()) for group in range(len(groups.sizes))]

    @property
    def rows(self) -> int:
        """The rows trained on (those not held out)."""
        return sum(self.kept)

    def _held(self, group: int) -> np.ndarray:
        size = self.groups.sizes[group]
        if self.holdout is None:
            return np.zeros(size, dtype=bool)
        return np.random.default_rng([self.seed, group]).random(size) < self.holdout

    def _read(self, groups: Sequence[int], *, held: bool = False) -> Tensors:
        """The tensors of ``groups``' training rows (``held``: their held-out rows), read and made
        a group at a time into tensors allocated once: joined from their parts, a buffer of wide
        rows (the GAN's one-hot matrix) would be held twice."""
        rows = sum(int(self._held(group).sum()) if held else self.kept[group] for group in groups)
        out: list[torch.Tensor] = []
        at = 0
        for group in groups:
            mask = self._held(group)
            table = self.groups.read(group).filter(pa.array(mask if held else ~mask))
            for start in range(0, table.num_rows, STREAM_ENCODE_ROWS):
                part = self.tensors(table.slice(start, STREAM_ENCODE_ROWS))
                out = out or [tensor.new_empty((rows, *tensor.shape[1:])) for tensor in part]
                for whole, tensor in zip(out, part, strict=True):
                    whole[at : at + len(tensor)] = tensor
                at += len(part[0])
        return tuple(out)

    def each(self) -> Iterator[Tensors]:
        """The tensors of every training row, a row group at a time, in the file's order."""
        for group in range(len(self.groups.sizes)):
            yield self._read([group])

    def validation(self) -> Tensors:
        """The held-out rows the validation loss is measured on (none without ``holdout``)."""
        parts: list[Tensors] = []
        rows = 0
        for group in range(len(self.groups.sizes) if self.holdout is not None else 0):
            if rows >= STREAM_VALIDATION_ROWS:
                break
            if part := self._read([group], held=True):
                parts.append(tuple(tensor[: STREAM_VALIDATION_ROWS - rows] for tensor in part))
                rows += len(parts[-1][0])
        return _joined(parts)

    def epoch(
        self, generator: torch.Generator, batch_size: int, device: torch.device, skip: int = 0
    ) -> tuple[int, Iterator[Tensors]]:
        """``(count, batches)``: one epoch's batches on ``device`` from its ``skip``-th on, and how
        many it has in all."""
        order = torch.randperm(len(self.groups.sizes), generator=generator).tolist()
        buffers = [order[i : i + self.per_buffer] for i in range(0, len(order), self.per_buffer)]
        seeds = torch.randint(0, 2**62, (len(buffers),), generator=generator).tolist()
        plan = []
        for groups, seed in zip(buffers, seeds, strict=True):
            if rows := sum(self.kept[group] for group in groups):
                size = min(batch_size, rows)
                plan.append((groups, seed, size, rows // size))
        return sum(count for *_, count in plan), self._batches(plan, device, skip)

    def _batches(
        self, plan: list[tuple[list[int], int, int, int]], device: torch.device, skip: int
    ) -> Iterator[Tensors]:
        for groups, seed, size, count in plan:
            if skip >= count:
                skip -= count
                continue
            data = self._read(groups)
            order = torch.randperm(len(data[0]), generator=torch.Generator().manual_seed(seed))
            for start in range(skip * size, count * size, size):
                yield tuple(to_device(tensor[order[start : start + size]], device) for tensor in data)
            skip = 0
            del data, order  # before the next buffer is read, not after


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


@_on_free_cores
def fit_loop(
    *,
    name: str,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    step: StepFn,
    data: Tensors | StreamedRows,
    train: TrainSpec,
    device: torch.device,
    checkpoints: CheckpointStore | None = None,
    evaluate: EvalFn | None = None,
    log_every_seconds: float = 5.0,
    private: PrivateSGD | None = None,
    plan: PrivacyPlan | None = None,
    threads: CpuThreads | None = None,
) -> FitReport:
    """Run ``step`` over shuffled batches of ``data`` for ``train.epochs`` or the time budget, on as
    many CPU threads as there are free cores (``threads``, given by the decorator). ``data``: the
    rows' tensors, or rows read a few row groups at a time (:class:`StreamedRows`, which holds
    its validation rows out itself).

    With ``train.early_stopping_patience`` and an ``evaluate`` function (a loss on a batch, no
    gradients), ``train.validation_fraction`` of the rows is held out; training stops when the mean
    validation loss has not improved for that many epochs and the best weights are restored.

    With ``private`` (DP-SGD; ``step`` then calls :func:`private_step`), batches are Poisson
    samples, about ``1 / q`` of them an epoch; training stops when the budget is spent, and the
    accountant's state is checkpointed with the weights, so a resumed training goes on counting.
    ``plan`` reports what was spent.
    """
    seed_everything(train.seed)
    if isinstance(data, StreamedRows):
        holdout = data.validation() if evaluate is not None else ()
    else:
        data, holdout = _split(data, train, evaluate)
        data = tuple(to_device(tensor, device) for tensor in data)
    holdout = tuple(to_device(tensor, device) for tensor in holdout)
    order = torch.Generator().manual_seed(train.seed)
    start_epoch = start_batch = global_step = stale_epochs = 0
    elapsed_before = 0.0
    best_loss, best_state = math.inf, None
    saved = plan.checkpoint(checkpoints) if plan is not None else checkpoints.load() if checkpoints else None
    if saved is not None:
        for key, module in modules.items():
            module.load_state_dict(saved["modules"][key])
        for key, optimizer in optimizers.items():
            optimizer.load_state_dict(saved["optimizers"][key])
        start_epoch, start_batch = int(saved["epoch"]), int(saved["batch"])
        global_step, elapsed_before = int(saved["step"]), float(saved["elapsed"])
        best_loss, stale_epochs = float(saved.get("best_loss", math.inf)), int(saved.get("stale", 0))
        order.set_state(saved["order"])
        if private is not None:
            private.load_state_dict(saved["privacy"])
        torch.set_rng_state(saved["rng"]["torch"])
        if "cuda" in saved["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(saved["rng"]["cuda"])
        log.info("%s: resuming from checkpoint at step %d (epoch %d)", name, global_step, start_epoch)
    report = FitReport(resumed_from_step=global_step, device=str(device))
    budget = train.max_minutes * 60 if train.max_minutes else math.inf
    started = last_log = time.monotonic()
    seen = 0
    losses: dict[str, float] = {}

    def save(epoch: int, batch: int, epoch_order: torch.Tensor) -> None:
        if checkpoints is None:
            return
        checkpoints.save(
            {
                "modules": {key: module.state_dict() for key, module in modules.items()},
                "optimizers": {key: opt.state_dict() for key, opt in optimizers.items()},
                "epoch": epoch,
                "batch": batch,
                "step": global_step,
                "elapsed": elapsed_before + time.monotonic() - started,
                "order": epoch_order,
                "rng": _rng_state(),
                "best_loss": best_loss,
                "stale": stale_epochs,
                **({"privacy": private.state_dict()} if private is not None else {}),
                **({"statistics": json.dumps(plan.released)} if plan is not None and plan.released else {}),
            }
        )

    for module in modules.values():
        module.train()
    epoch = start_epoch
    for epoch in range(start_epoch, train.epochs):
        epoch_order = order.get_state()
        first = start_batch if epoch == start_epoch else 0
        count, batches = _epoch(data, order, train, device, private, first)
        for index, batch in enumerate(batches, start=first):
            if private is not None and private.exhausted:
                report.stopped = "privacy budget"
                break
            with autocast(device):
                raw = step(batch)
            losses = {key: float(value) for key, value in raw.items()}
            bad = {key: value for key, value in losses.items() if not math.isfinite(value)}
            if bad:
                key, value = next(iter(bad.items()))
                raise TrainingDiverged(
                    f"{name}: loss {key} became {value} at step {global_step + 1} (epoch {epoch + 1}); "
                    "lower the learning rate or check the data"
                )
            global_step += 1
            seen += len(batch[0])
            now = time.monotonic()
            if threads is not None:
                threads.adjust(now)
            if global_step % train.checkpoint_every == 0:
                save(epoch, index + 1, epoch_order)
            if now - last_log >= log_every_seconds:
                last_log = now
                done = max(
                    (epoch + (index + 1) / max(count, 1)) / train.epochs,
                    (elapsed_before + now - started) / budget,
                )
                rate = seen / max(now - started, 1e-9)
                shown = " ".join(f"{key}={value:.4f}" for key, value in losses.items())
                log.info(
                    "%s %s epoch %d/%d step %d %s (%.0f samples/s)",
                    name,
                    progress_bar(done),
                    epoch + 1,
                    train.epochs,
                    global_step,
                    shown,
                    rate,
                )
            if elapsed_before + now - started >= budget:
                report.stopped = "time budget"
                break
        if report.stopped in ("time budget", "privacy budget"):
            break
        if holdout and evaluate is not None:
            loss = _mean_loss(evaluate, holdout, train.batch_size, modules)
            report.validation_loss = loss
            # to the millisecond, rounded down: a point is never past the training's seconds
            report.curve.append([int((elapsed_before + time.monotonic() - started) * 1000) / 1000, loss])
            if loss < best_loss - 1e-6:
                best_loss, stale_epochs = loss, 0
                best_state = {key: _cpu_copy(module.state_dict()) for key, module in modules.items()}
            else:
                stale_epochs += 1
            if stale_epochs >= (train.early_stopping_patience or math.inf):
                report.stopped = "early stop"
                break
    if best_state is not None and report.stopped == "early stop":
        for key, module in modules.items():
            module.load_state_dict(best_state[key])
        report.validation_loss = best_loss
    seconds = time.monotonic() - started
    for module in modules.values():
        module.eval()
    report.steps = global_step
    report.epochs = epoch + 1
    report.seconds = elapsed_before + seconds
    report.samples_per_second = seen / max(seconds, 1e-9)
    report.losses = losses
    if private is not None and plan is not None:
        report.privacy = plan.report(private)
        log.info(
            "%s: differential privacy: epsilon %.3f of %.3f spent (delta %.1e), noise multiplier %.3f",
            name,
            report.privacy["epsilon"],
            report.privacy["target_epsilon"],
            report.privacy["delta"],
            private.noise_multiplier,
        )
    log.info("%s: trained %d steps in %.1f s (%s)", name, global_step, report.seconds, report.stopped)
    return report


def _epoch(
    data: Tensors | StreamedRows,
    order: torch.Generator,
    train: TrainSpec,
    device: torch.device,
    private: PrivateSGD | None,
    first: int,
) -> tuple[int, Iterator[Tensors]]:
    """``(count, batches)``: an epoch's batches of ``data`` from the ``first``-th on, and how many
    it has in all, drawn from ``order``: shuffled batches, or with ``private`` Poisson samples of
    the rows, about ``1 / q`` of them."""
    if isinstance(data, StreamedRows):
        return data.epoch(order, train.batch_size, device, skip=first)
    if private is None:
        indices = _batches(len(data[0]), train.batch_size, order)
    else:
        indices = [private.batch(order) for _ in range(max(1, round(1 / private.sample_rate)))]
    batches = (tuple(tensor[index.to(device)] for tensor in data) for index in indices[first:])
    return len(indices), batches


def progress_bar(done: float, width: int = 20) -> str:
    """``[######--------------]  30%``: readable in a terminal, a CI log and Prefect's UI alike."""
    done = min(max(done, 0.0), 1.0)
    filled = round(done * width)
    return f"[{'#' * filled}{'-' * (width - filled)}] {done:4.0%}"


def _split(
    data: tuple[torch.Tensor, ...], train: TrainSpec, evaluate: EvalFn | None
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Hold out a seeded validation share when early stopping is asked for."""
    n = len(data[0])
    if train.early_stopping_patience is None or evaluate is None or n < 10:
        return data, ()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(train.seed + 1))
    cut = max(1, int(n * train.validation_fraction))
    return tuple(t[order[cut:]] for t in data), tuple(t[order[:cut]] for t in data)


def _mean_loss(
    evaluate: EvalFn, holdout: tuple[torch.Tensor, ...], batch_size: int, modules: Mapping[str, nn.Module]
) -> float:
    for module in modules.values():
        module.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start, stop in batched_indices(len(holdout[0]), batch_size):
            total += float(evaluate(tuple(t[start:stop] for t in holdout))) * (stop - start)
            count += stop - start
    for module in modules.values():
        module.train()
    return total / max(count, 1)


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def batched_indices(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` pairs covering ``range(n)`` in batches."""
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)
