"""A conditional tabular GAN in the manner of CTGAN (Xu et al., 2019).

The generator maps noise plus a conditional vector to the encoder's spans through residual blocks
(each block's output is concatenated to its input, as CTGAN's are); continuous values come out
as they are (the encoder's z is standard normal, so no squashing) and one-hot spans through a
Gumbel-softmax. The critic judges ``pac`` rows at once (PacGAN) with the WGAN-GP loss.

The conditional vector is the one-hot of the job's label (always: it makes conditioning on the
label exact) and CTGAN's training-by-sampling condition: one category of one discrete span,
picked with log-frequency so rare categories are learned, which the generator must honour
(a cross-entropy term) and which real rows shown to the critic have. Sampling draws that
condition from the category's real frequency *given the row's label*, so label and columns keep
their joint distribution whether the label is fixed or drawn.

The vector also carries the revealed columns (``models.tabular``): a share of training rows give
the generator some of the real row's columns, and the fake row takes those values before the
critic judges it, so the generator learns the rest of a row given any columns. When a request
fixes a discrete column, the training-by-sampling condition is that column's value, as in CTGAN's
own conditional sampling.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets.base import Dataset
from genai_pipeline.encoders.tabular import Span
from genai_pipeline.errors import ConfigError
from genai_pipeline.models.base import register_model
from genai_pipeline.models.spans import sample_spans, span_slices
from genai_pipeline.models.tabular import (
    Known,
    TabularModelConfig,
    TabularSynthesizer,
    Width,
    matrix_tensors,
)
from genai_pipeline.privacy.dp import dp_counts
from genai_pipeline.training import (
    STREAM_ENCODE_ROWS,
    CheckpointStore,
    FitReport,
    StreamedRows,
    Tensors,
    adam,
    check_gradients,
    fit_loop,
    frozen_copy,
    maybe_compile,
    private_step,
    row_count,
    to_device,
    update_ema,
)

NAME = "tabular GAN"

Beta = Annotated[float, Field(ge=0, lt=1)]


class TabularGANConfig(TabularModelConfig):
    """CTGAN's defaults, plus a moving average of the generator (it lifted pair trends on Adult
    from 0.86 to 0.91 after two minutes of training) and layer norm in place of batch norm."""

    noise_dim: int = Field(default=128, ge=1, le=1024, description="width of the generator's noise")
    generator_dims: tuple[Width, ...] = Field(
        default=(256, 256), min_length=1, max_length=8, description="widths of the residual blocks"
    )
    critic_dims: tuple[Width, ...] = Field(default=(256, 256), min_length=1, max_length=8)
    pac: int = Field(default=10, ge=1, le=64, description="rows the critic judges together (PacGAN)")
    generator_lr: float = Field(default=2e-4, gt=0, le=1)
    critic_lr: float = Field(default=2e-4, gt=0, le=1)
    betas: tuple[Beta, Beta] = (0.5, 0.9)
    weight_decay: float = Field(default=1e-6, ge=0, le=1)
    critic_steps: int = Field(default=1, ge=1, le=10, description="critic steps per generator step")
    gradient_penalty: float = Field(default=10.0, ge=0, le=1000, description="weight of WGAN-GP's term")
    gumbel_tau: float = Field(default=0.2, gt=0, le=10, description="Gumbel-softmax temperature")
    ema_decay: float = Field(
        default=0.999, ge=0, lt=1, description="the sampled weights are this moving average of training's"
    )


class CategorySampler(nn.Module):
    """Training-by-sampling: a condition is one category of one discrete span.

    The discrete spans are the encoder's softmax spans with two or more categories (a column's
    categories or a numeric column's null flag); their categories are numbered across spans, and
    that number's one-hot is the condition's part of the generator's input. How often each
    category occurs with each label is a buffer, so it is saved with the weights and sampling can
    draw conditions from the real joint frequencies.
    """

    def __init__(self, spans: Sequence[Span], num_labels: int):
        super().__init__()
        columns: list[int] = []
        groups: list[list[int]] = []
        for span, cols in span_slices(spans):
            if span.kind == "softmax" and span.size > 1:
                groups.append(list(range(len(columns), len(columns) + span.size)))
                columns.extend(range(cols.start, cols.stop))
        self.width = len(columns)
        self.num_labels = num_labels
        widest = max(map(len, groups), default=0)
        # each span's categories padded with an index past the last, whose count is always zero
        padded = [group + [self.width] * (widest - len(group)) for group in groups]
        self.register_buffer("counts", torch.zeros(max(num_labels, 1), self.width))
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.long), persistent=False)
        self.register_buffer(
            "choices", torch.tensor(padded, dtype=torch.long).view(len(groups), widest), persistent=False
        )

    def categories(self, x: torch.Tensor) -> torch.Tensor:
        """``[rows, spans]``: each row's category (numbered across spans) in every discrete span."""
        picked = F.pad(x[:, self.columns], (0, 1), value=-1.0)  # the padding index is never picked
        found = [group[picked[:, group].argmax(dim=1)] for group in self.choices]
        return torch.stack(found, dim=1) if found else self.columns.new_zeros((len(x), 0))

    def fit(self, parts: Iterable[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        """Count each category per label over the rows' ``(encoded rows, labels)`` parts."""
        self.counts.zero_()
        for x, labels in parts:
            categories = self.categories(x)
            rows = torch.zeros(len(categories), dtype=torch.long, device=categories.device)
            rows = (rows if labels is None else labels)[:, None].expand_as(categories)
            ones = self.counts.new_ones(categories.shape)
            self.counts.index_put_((rows, categories), ones, accumulate=True)

    def draw_for_training(self, size: int, present: torch.Tensor | None = None) -> torch.Tensor | None:
        """A span for each row uniformly, then a category with probability ∝ log(1 + count),
        among the ``present`` ones (a mask over the categories) when given."""
        if self.width == 0:
            return None
        weights = torch.log1p(self.counts.sum(dim=0))
        if present is not None:
            weights = weights * present
        weights = F.pad(weights, (0, 1))[self.choices]
        span = torch.randint(len(self.choices), (size,), device=self.counts.device)
        return self.choices[span, torch.multinomial(weights[span], 1)[:, 0]]

    def draw(
        self,
        labels: torch.Tensor | None,
        size: int,
        generator: torch.Generator,
        banned: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """A span for each row uniformly, then a category with its real frequency given the label;
        never one of the ``banned`` matrix columns (``Known.banned``: an imputed column's null)."""
        if self.width == 0:
            return None
        device = self.counts.device
        span = torch.randint(len(self.choices), (size,), device=device, generator=generator)
        rows = torch.zeros(size, dtype=torch.long, device=device) if labels is None else labels
        counts = self.counts
        if banned is not None:
            counts = counts.masked_fill(banned.to(device)[self.columns][None, :], 0.0)
        weights = F.pad(counts, (0, 1))[rows[:, None], self.choices[span]]
        return self.choices[span, torch.multinomial(weights, 1, generator=generator)[:, 0]]

    def draw_known(
        self, known: Known, features: torch.Tensor, size: int, generator: torch.Generator
    ) -> torch.Tensor:
        """A condition among the known discrete spans (``features``: which matrix columns are known)."""
        spans = [
            k
            for k, group in enumerate(self.choices)
            if features[self.columns[group[group < self.width]]].all()
        ]
        categories = self.categories(known.row[None])[0, spans]
        return categories[torch.randint(len(spans), (size,), device=categories.device, generator=generator)]

    def vector(
        self, condition: torch.Tensor | None, labels: torch.Tensor | None, revealed: torch.Tensor
    ) -> torch.Tensor:
        """The conditional vector: the condition's one-hot, the label's, and the revealed columns."""
        parts = []  # identity rows rather than one_hot, whose range check per-row gradients cannot take
        if condition is not None:
            parts.append(torch.eye(self.width, dtype=revealed.dtype, device=revealed.device)[condition])
        if labels is not None:
            parts.append(torch.eye(self.num_labels, dtype=revealed.dtype, device=revealed.device)[labels])
        return torch.cat([*parts, revealed], dim=1)

    def own_condition(self, rows: torch.Tensor) -> torch.Tensor | None:
        """A condition per row taken from the row itself: one of its categories, of a span chosen
        at random. What a DP critic's real rows are judged with (training-by-sampling picks rows by
        condition, which Poisson sampling's accounting does not allow)."""
        if self.width == 0:
            return None
        own = self.categories(rows)
        span = torch.randint(own.shape[1], (len(rows),), device=rows.device)
        return own.gather(1, span[:, None])[:, 0]


class RowIndex:
    """Real rows grouped by category, to draw rows that have a condition: all the training rows,
    or, where they are streamed (``train.in_memory_rows``), the step's batch of them, whose
    categories are then the only conditions drawn (:attr:`present`). A category that is rare in
    the table is then a condition less often than CTGAN's log-frequency asks: only in the batches
    that hold it."""

    def __init__(self, sampler: CategorySampler, x: torch.Tensor, labels: torch.Tensor | None):
        self.x, self.labels = x, labels
        categories = sampler.categories(x)
        spans = categories.shape[1]
        flat = categories.flatten()
        self.rows = torch.argsort(flat, stable=True) // spans
        self.count = torch.bincount(flat, minlength=sampler.width)
        self.start = torch.cumsum(self.count, dim=0) - self.count
        self.num_rows = len(categories)

    @property
    def present(self) -> torch.Tensor:
        """Which categories the rows hold."""
        return self.count > 0

    def draw(self, condition: torch.Tensor | None, size: int) -> torch.Tensor:
        """Uniformly among the rows that have each condition (among all rows without one)."""
        if condition is None:
            return torch.randint(self.num_rows, (size,), device=self.rows.device)
        offset = (torch.rand(size, device=self.rows.device) * self.count[condition]).long()
        return self.rows[self.start[condition] + offset]


class Residual(nn.Module):
    """CTGAN's block: its output is concatenated to its input. Layer norm stands in for batch
    norm because it behaves the same in training and sampling, and a row does not depend on the
    other rows of its batch (see ``image_gan``)."""

    def __init__(self, fan_in: int, fan_out: int):
        super().__init__()
        self.linear = nn.Linear(fan_in, fan_out)
        self.norm = nn.LayerNorm(fan_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(self.norm(self.linear(x))), x], dim=1)


class Generator(nn.Module):
    def __init__(self, width: int, cond_width: int, config: TabularGANConfig):
        super().__init__()
        blocks: list[nn.Module] = []
        fan_in = config.noise_dim + cond_width
        for dim in config.generator_dims:
            blocks.append(Residual(fan_in, dim))
            fan_in += dim
        self.body = nn.Sequential(*blocks, nn.Linear(fan_in, width))

    def forward(self, noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([noise, cond], dim=1))


class Critic(nn.Module):
    """Scores groups of ``pac`` consecutive rows (each with its conditional vector)."""

    def __init__(self, width: int, config: TabularGANConfig, pac: int | None = None):
        super().__init__()
        self.pac = config.pac if pac is None else pac
        layers: list[nn.Module] = []
        fan_in = self.pac * width
        for dim in config.critic_dims:
            layers += [nn.Linear(fan_in, dim), nn.LeakyReLU(0.2), nn.Dropout(0.5)]
            fan_in = dim
        self.body = nn.Sequential(*layers, nn.Linear(fan_in, 1))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.body(rows.reshape(-1, self.pac * rows.shape[1]))[:, 0]


def activate(raw: torch.Tensor, spans: Sequence[Span], tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, log_probs)`` for training: continuous values as they are and a Gumbel-softmax
    (differentiable, nearly one-hot) in softmax spans; log-probabilities in softmax columns for
    the condition's cross-entropy (zero in continuous ones)."""
    rows, log_probs = [], []
    for span, cols in span_slices(spans):
        block = raw[:, cols]
        if span.kind == "continuous":
            rows.append(block)
            log_probs.append(torch.zeros_like(block))
        else:
            rows.append(F.gumbel_softmax(block, tau=tau))
            log_probs.append(F.log_softmax(block, dim=1))
    return torch.cat(rows, dim=1), torch.cat(log_probs, dim=1)


def row_gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP for a critic of single rows, through ``torch.func``: the form a per-row (DP)
    gradient can differentiate again (``autograd.grad`` cannot run inside it)."""
    alpha = torch.rand(len(real), 1, device=real.device)
    mixed = alpha * real + (1 - alpha) * fake
    grad = torch.func.grad(lambda rows: critic(rows).sum())(mixed)
    return (grad.norm(dim=1) - 1).pow(2).mean()


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: the critic's gradient norm on mixes of real and fake groups is pushed to 1."""
    pac = critic.pac
    alpha = torch.rand(len(real) // pac, 1, 1, device=real.device).expand(-1, pac, 1).reshape(-1, 1)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return (grad.reshape(-1, pac * real.shape[1]).norm(dim=1) - 1).pow(2).mean()


def _with_labels(batch: Tensors) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(rows, labels)`` of a batch of :func:`matrix_tensors` (labels None without a label)."""
    return batch[0], batch[1] if len(batch) > 1 else None


@register_model
class TabularGAN(TabularSynthesizer):
    family = "gan"
    name = NAME
    Config = TabularGANConfig
    streams = True
    dp_histograms_per_column = 1  # the category counts of training-by-sampling: one per discrete span

    config: TabularGANConfig
    sampler: CategorySampler
    generator: Generator
    ema: Generator

    def fit_family(self, data: Dataset, train: TrainSpec, checkpoints: CheckpointStore | None) -> FitReport:
        """CTGAN's training; with ``train.privacy``, a DP critic (one row judged at a time, on its
        own Poisson-sampled rows with a condition taken from each row, one critic step a step) and
        a generator that sees no real row (DP by post-processing), so it learns the label as a
        condition but no revealed columns. Rows streamed a few row groups at a time
        (``train.in_memory_rows``) are counted in one pass, and each step draws its real rows
        from its own batch (:class:`RowIndex`)."""
        config = self.config
        # the rows' tensors, or where they are streamed a sample's, not kept
        tensors = self.training_rows(
            data,
            train,
            matrix_tensors,
            matrix_tensors(*self.prepare(data, train, checkpoints=checkpoints)),
            holds_out=False,
        )
        count = row_count(tensors)
        private = self.plan.sgd(train, rows=count) if self.plan is not None else None
        pac = config.pac if private is None else 1
        if min(train.batch_size, count) < pac:
            raise ConfigError(
                f"train.batch_size: the {NAME}'s critic judges pac={pac} rows at once; "
                f"batches of {min(train.batch_size, count)} rows are too small"
            )
        sampler, spans, reveal = self.sampler, self.encoder.spans, self.reveal
        if isinstance(tensors, StreamedRows):
            every: RowIndex | None = None
            sampler.fit(  # a slice at a time: the categories of a whole row group took ~170 MB
                _with_labels(
                    tuple(to_device(t[start : start + STREAM_ENCODE_ROWS], self.device) for t in part)
                )
                for part in tensors.each()
                for start in range(0, len(part[0]), STREAM_ENCODE_ROWS)
            )
        else:
            every = RowIndex(sampler, *_with_labels(tuple(to_device(t, self.device) for t in tensors)))
            sampler.fit([(every.x, every.labels)])
        if self.plan is not None:  # the category counts are a release: a row adds one in each span
            counts = dp_counts(sampler.counts.cpu().numpy(), self.plan.statistics, len(sampler.choices))
            sampler.counts.copy_(torch.from_numpy(counts))
        critic = Critic(self.encoder.width + self.cond_width, config, pac).to(self.device)
        opt_g = adam(
            self.generator.parameters(),
            lr=config.generator_lr,
            betas=config.betas,
            weight_decay=config.weight_decay,
        )
        opt_d = adam(
            critic.parameters(), lr=config.critic_lr, betas=config.betas, weight_decay=config.weight_decay
        )
        compile_ = private is None
        generator, judge = (
            maybe_compile(net, train, self.device) if compile_ else net for net in (self.generator, critic)
        )
        prior = torch.tensor(self.prior.probs, device=self.device) if self.labels else None

        def draw(
            rows: RowIndex | None, size: int
        ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
            """A condition per row, real ``rows`` that meet it, their revealed features and the
            conditional vector; with privacy, no real row: labels from the (DP) prior, nothing
            revealed."""
            if rows is None:
                condition = sampler.draw_for_training(size)
                label = None if prior is None else torch.multinomial(prior, size, replacement=True)
                nothing = torch.zeros(size, reveal.columns, dtype=torch.bool, device=self.device)
                real = torch.zeros((size, self.encoder.width), device=self.device)
                return (
                    condition,
                    real,
                    reveal.features(nothing),
                    sampler.vector(condition, label, reveal.inputs(real, nothing)),
                )
            condition = sampler.draw_for_training(size, None if rows is every else rows.present)
            picked = rows.draw(condition, size)
            label = None if rows.labels is None else rows.labels[picked]
            shown = reveal.training_mask(size, config.reveal_rate, self.device)
            real = rows.x[picked]
            return (
                condition,
                real,
                reveal.features(shown),
                sampler.vector(condition, label, reveal.inputs(real, shown)),
            )

        def fake_rows(
            size: int, cond: torch.Tensor, real: torch.Tensor, shown: torch.Tensor
        ) -> tuple[torch.Tensor, ...]:
            """Generated rows (revealed columns set to the real row's) and their log-probabilities."""
            noise = torch.randn(size, config.noise_dim, device=self.device)
            fake, log_probs = activate(generator(noise, cond), spans, config.gumbel_tau)
            return torch.where(shown, real, fake), log_probs

        def private_critic_loss(real: torch.Tensor, *label: torch.Tensor) -> torch.Tensor:
            """The critic's loss on its own rows (a Poisson batch), each judged with one of its
            categories as the condition, against fakes made for the same conditions."""
            nothing = torch.zeros(len(real), reveal.columns, dtype=torch.bool, device=real.device)
            cond = sampler.vector(
                sampler.own_condition(real), label[0] if label else None, reveal.inputs(real, nothing)
            )
            with torch.no_grad():
                fake, _ = fake_rows(len(real), cond, real, reveal.features(nothing))
            real, fake = torch.cat([real, cond], dim=1), torch.cat([fake, cond], dim=1)
            return (
                judge(fake).mean()
                - judge(real).mean()
                + config.gradient_penalty * row_gradient_penalty(judge, real, fake)
            )

        def critic_step(
            batch: tuple[torch.Tensor, ...], rows: RowIndex | None, size: int
        ) -> dict[str, torch.Tensor]:
            if private is not None:
                return {
                    "d_loss": private_step(private, {"critic": critic}, private_critic_loss, batch, opt_d)
                }
            for _ in range(config.critic_steps):
                _, real, shown, cond = draw(rows, size)
                with torch.no_grad():
                    fake, _ = fake_rows(size, cond, real, shown)
                real, fake = torch.cat([real, cond], dim=1), torch.cat([fake, cond], dim=1)
                wasserstein = judge(fake).mean() - judge(real).mean()
                d_loss = wasserstein + config.gradient_penalty * gradient_penalty(judge, real, fake)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                check_gradients(critic.parameters(), max_norm=1e3, name=f"{NAME} critic")
                opt_d.step()
            return {"d_loss": d_loss.detach(), "wasserstein": -wasserstein.detach()}

        def step(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
            # the loop's batch sets how many rows a step sees; which rows is training-by-sampling's,
            # among all of them or the streamed batch's (with privacy: the batch itself, for the
            # critic; the generator sees none)
            size = (train.batch_size if private is not None else len(batch[0])) // pac * pac
            rows = None if private is not None else every or RowIndex(sampler, *_with_labels(batch))
            logged = critic_step(batch, rows, size)
            condition, real, shown, cond = draw(rows, size)
            fake, log_probs = fake_rows(size, cond, real, shown)
            g_loss = -judge(torch.cat([fake, cond], dim=1)).mean()
            if condition is not None:
                # the generator must produce the category it was asked for (CTGAN's cond loss)
                g_loss = g_loss - log_probs.gather(1, sampler.columns[condition][:, None]).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            check_gradients(self.generator.parameters(), max_norm=1e3, name=f"{NAME} generator")
            opt_g.step()
            update_ema(self.ema, self.generator, opt_g, config.ema_decay)
            return {**logged, "g_loss": g_loss.detach()}

        if not isinstance(tensors, StreamedRows) and private is None:
            tensors = tensors[:1]  # the loop's batches only count the rows: the labels are every's
        return fit_loop(
            name=NAME,
            # with privacy the released category counts go into the checkpoint: a resumed fit
            # goes on with them instead of releasing them again
            modules={
                "generator": self.generator,
                "ema": self.ema,
                "critic": critic,
                **({"conditions": sampler} if private is not None else {}),
            },
            optimizers={"generator": opt_g, "critic": opt_d},
            step=step,
            data=tensors,
            train=train,
            device=self.device,
            checkpoints=checkpoints,
            private=private,
            plan=self.plan,
        )

    def render(
        self, label: torch.Tensor | None, known: Known | None, size: int, generator: torch.Generator
    ) -> torch.Tensor:
        noise = torch.randn((size, self.config.noise_dim), generator=generator, device=self.device)
        banned = known.banned if known is not None else None
        condition = self.sampler.draw(label, size, generator, banned)
        if known is not None and condition is not None:
            features = self.reveal.features(known.columns[None])[0]
            if features[self.sampler.columns].any():  # a known discrete span: condition on its value
                condition = self.sampler.draw_known(known, features, size, generator)
        cond = self.sampler.vector(condition, label, self.reveal.known_inputs(known, size, noise))
        return sample_spans(self.ema(noise, cond), self.encoder.spans, None, generator, banned)

    @property
    def cond_width(self) -> int:
        return self.sampler.width + self.labels + self.reveal.size

    def family_networks(self) -> dict[str, nn.Module]:
        return {"generator": self.ema, "conditions": self.sampler}

    def build(self, state: dict[str, Any]) -> None:
        self.sampler = CategorySampler(self.encoder.spans, self.labels).to(self.device)
        self.generator = Generator(self.encoder.width, self.cond_width, self.config).to(self.device)
        self.ema = frozen_copy(self.generator)
