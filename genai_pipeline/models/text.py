"""Text columns: a language model per column, trained in the pipeline, writing each row's text given
the row's other columns.

**Tokens.** A byte-level BPE tokenizer (the ``tokenizers`` package) is trained on the column: any
unicode text has tokens (every byte is one), and a merge is learned only from a pair that occurs at
least ``min_rows`` times, so no token spells out a rare real string.

**Model.** A small causal transformer (GPT-style blocks, learned positions) over the tokens, whose
first positions are a *prefix* computed from the row's other columns: the table model's encoded row
(:class:`~genai_pipeline.encoders.tabular.TableEncoder`'s matrix, one-hot categories and normal
scores) and its label. The table model draws the other columns first; this model then writes the
text given them, so a 1-star review reads unlike a 5-star one. Trained with the pipeline's training
loop (checkpoints, resume, early stopping on held-out perplexity), saved as tensors and JSON.

**Sampling.** Batched, with a key/value cache (one token per step for every row at once), a
temperature and nucleus (top-p) sampling, at most ``max_tokens`` tokens.

**Memorisation, prevented.** A synthetic text may share no run of 8 words (nor, for a shorter
text, the whole of it) with fewer than ``min_rows`` training texts
(:mod:`genai_pipeline.privacy.memorisation`): the hashes of those rare runs are kept with the model
(in its private workspace, never published) and a sampled text holding one is drawn again, up to
:data:`REDRAWS` times, then replaced by another synthetic text of its batch that passed. A sentence
one customer wrote cannot come out; phrases many texts share can.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from genai_pipeline.config import TrainSpec
from genai_pipeline.privacy.memorisation import holds_rare, rare_runs
from genai_pipeline.strict import StrictModel
from genai_pipeline.training import CheckpointStore, FitReport, adamw, fit_loop, optimise

log = logging.getLogger(__name__)

PAD, BOS, EOS, NULL = "<pad>", "<bos>", "<eos>", "<null>"
SPECIALS = [PAD, BOS, EOS, NULL]
#: prefix positions the row's other columns are given as
PREFIX = 2
#: times a text holding a rare training run is drawn again before another text replaces it
REDRAWS = 3
#: a training batch is run in this many groups of similar length (see ``_train``)
LENGTH_GROUPS = 4
#: each redraw divides the logits by this much more (a higher temperature)
REDRAW_HEAT = 0.5
#: nucleus sampling looks among this many likeliest tokens
TOP_K = 200
#: rows sampled at once (each step runs every row of the chunk through the network)
SAMPLE_CHUNK = 512


class TextModelConfig(StrictModel):
    """How a text column's language model is sized, trained and sampled."""

    vocab_size: int = Field(default=1000, ge=300, le=100_000, description="BPE vocabulary (bytes included)")
    max_tokens: int = Field(default=96, ge=4, le=4096, description="longest text in tokens (longer are cut)")
    width: int = Field(default=128, ge=16, le=4096)
    layers: int = Field(default=2, ge=1, le=48)
    heads: int = Field(default=4, ge=1, le=64)
    dropout: float = Field(default=0.3, ge=0, lt=1)  # overfitting: see weight_decay (BENCHMARKS.md)
    epochs: int = Field(default=60, ge=1, le=10_000, description="at most: training stops on held-out loss")
    batch_size: int = Field(default=64, ge=1, le=65_536)
    learning_rate: float = Field(default=2e-3, gt=0, le=1)
    #: AdamW's decoupled decay: a small corpus is learned best with strong decay (ChatterBot's
    #: held-out perplexity 12.4 at 1.0 against 15.2 at 0.01, 13.8 at 0.3, 14.2 at 1.5; BENCHMARKS.md)
    weight_decay: float = Field(default=1.0, ge=0, le=10)
    temperature: float = Field(default=1.0, gt=0, le=10, description="sampling temperature")
    top_p: float = Field(
        default=0.95, gt=0, le=1, description="nucleus sampling: the smallest set of this mass"
    )


def train_tokenizer(texts: Sequence[str], vocab_size: int, min_frequency: int) -> Any:
    """A byte-level BPE tokenizer of ``texts``, a merge learned only from pairs seen at least
    ``min_frequency`` times (value protection's ``min_rows``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def load_tokenizer(state: str) -> Any:
    """A tokenizer from its JSON (what :func:`train_tokenizer`'s ``to_str()`` gave)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(state)


class Block(nn.Module):
    """Pre-norm causal self-attention and MLP; ``cache`` holds earlier positions' keys and values."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        batch, length, width = x.shape
        q, k, v = (
            part.view(batch, length, self.heads, width // self.heads).transpose(1, 2)
            for part in self.qkv(self.norm1(x)).split(width, dim=2)
        )
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        attended = F.scaled_dot_product_attention(
            q, k, v, is_causal=cache is None, dropout_p=self.drop.p if self.training else 0.0
        )
        x = x + self.drop(self.out(attended.transpose(1, 2).reshape(batch, length, width)))
        return x + self.drop(self.mlp(self.norm2(x))), (k, v)


class TextNet(nn.Module):
    """The causal transformer: a prefix from the row's context, then token embeddings."""

    def __init__(self, context: int, vocab: int, config: TextModelConfig, rare: int):
        super().__init__()
        width = config.width
        self.prefix = nn.Linear(max(context, 1), PREFIX * width)
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(PREFIX + config.max_tokens + 2, width)
        self.blocks = nn.ModuleList(Block(width, config.heads, config.dropout) for _ in range(config.layers))
        self.norm = nn.LayerNorm(width)
        #: hashes of the token runs fewer than min_rows training texts hold, sorted
        self.register_buffer("rare", torch.zeros(rare, dtype=torch.int64))

    def forward(
        self,
        context: torch.Tensor,
        tokens: torch.Tensor,
        caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        start: int = 0,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits of the next token at each of ``tokens``' positions. Without ``caches`` the input
        is the prefix and ``tokens`` from the start; with them, ``tokens`` continue at ``start``."""
        x = self.embed(tokens)
        if caches is None:
            prefix = self.prefix(context).view(len(context), PREFIX, -1)
            x = torch.cat([prefix, x], dim=1)
        positions = torch.arange(start, start + x.shape[1], device=x.device)
        x = x + self.position(positions)
        new = []
        for index, block in enumerate(self.blocks):
            x, cache = block(x, None if caches is None else caches[index])
            new.append(cache)
        logits = F.linear(self.norm(x), self.embed.weight)  # tied: fewer weights for a small corpus
        return (logits[:, PREFIX:] if caches is None else logits), new


@dataclass
class TextColumn:
    """One text column's tokenizer and network."""

    name: str
    config: TextModelConfig
    tokenizer: Any
    net: TextNet
    nullable: bool

    @functools.cached_property
    def special(self) -> dict[str, int]:
        return {token: self.tokenizer.token_to_id(token) for token in SPECIALS}

    def encode(self, values: Sequence[str | None]) -> list[list[int]]:
        """Each text as ``[bos, tokens…, eos]`` (``[bos, null, eos]`` for a null), cut to
        ``max_tokens`` tokens."""
        special = self.special
        present = [value or "" for value in values]
        encoded = self.tokenizer.encode_batch(present, add_special_tokens=False)
        out = []
        for value, tokens in zip(values, encoded):
            body = [special[NULL]] if value is None else tokens.ids[: self.config.max_tokens]
            out.append([special[BOS], *body, special[EOS]])
        return out

    @functools.cached_property
    def rare(self) -> np.ndarray:
        """The rare runs' hashes, once on the host (read when sampling: the weights are loaded)."""
        return self.net.rare.cpu().numpy()

    def leaks(self, text: str | None) -> bool:
        """Whether a sampled text holds a run of words fewer than ``min_rows`` training texts held."""
        return text is not None and holds_rare(text, self.rare)

    def decode(self, sequence: list[int]) -> str | None:
        special = self.special
        body = sequence[1:-1] if sequence and sequence[-1] == special[EOS] else sequence[1:]
        if body[:1] == [special[NULL]]:
            return None
        return self.tokenizer.decode([t for t in body if t not in special.values()])

    @torch.no_grad()
    def draw(self, context: torch.Tensor, generator: torch.Generator, heat: float = 1.0) -> list[list[int]]:
        """A ``[bos, …, eos]`` token sequence per row of ``context``. The rows still writing are
        kept together: once a quarter of them has ended, the finished ones leave the batch (and
        their keys and values the cache), so a few long texts do not carry the short ones along."""
        net, special, config = self.net, self.special, self.config
        sequences = [[special[BOS]] for _ in range(len(context))]
        alive = list(range(len(context)))  # the row of each position of the batch
        done = torch.zeros(len(context), dtype=torch.bool, device=context.device)
        tokens = torch.full((len(context), 1), special[BOS], dtype=torch.long, device=context.device)
        logits, caches = net(context, tokens)
        banned = torch.tensor([special[PAD], special[BOS]], device=context.device)
        for step in range(config.max_tokens + 1):
            scores = logits[:, -1].float() / (config.temperature * heat)
            scores[:, banned] = -math.inf
            if step > 0 or not self.nullable:
                scores[:, special[NULL]] = -math.inf  # null only as the whole text, where the real had one
            if step == config.max_tokens:  # the longest text ends here
                scores[:, :] = -math.inf
                scores[:, special[EOS]] = 0.0
            chosen = _nucleus(scores, config.top_p, generator)
            for row, token, finished in zip(alive, chosen.tolist(), done.tolist()):
                if not finished:
                    sequences[row].append(token)
            done |= chosen == special[EOS]
            if bool(done.all()):
                break
            if int(done.sum()) * 4 >= len(alive):  # drop the finished rows
                keep = ~done
                alive = [row for row, kept in zip(alive, keep.tolist()) if kept]
                context, chosen, done = context[keep], chosen[keep], done[keep]
                caches = [(k[keep], v[keep]) for k, v in caches]
            logits, caches = net(context, chosen[:, None], caches, start=PREFIX + step + 1)
        return sequences


def _nucleus(scores: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row from the smallest set of tokens holding ``top_p`` of the probability,
    looked for among the :data:`TOP_K` likeliest (a full sort of the vocabulary per step cost more
    than the network)."""
    if top_p < 1:
        top, index = scores.topk(min(TOP_K, scores.shape[-1]), dim=-1)
        probs = torch.softmax(top, dim=-1)
        outside = probs.cumsum(dim=-1) - probs > top_p
        pick = torch.multinomial(probs.masked_fill(outside, 0.0), 1, generator=generator)
        return index.gather(-1, pick)[:, 0]
    return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)[:, 0]


@dataclass
class TextColumns:
    """Every text column of a table: trained on the rows' texts given their encoded rows, and
    filling the text columns of sampled rows."""

    columns: list[TextColumn]
    #: the context width: the encoded row's plus the label's one-hot
    context: int
    labels: int
    #: per column, the texts sampled so far that were drawn again or replaced (see the module's doc)
    redrawn: dict[str, int] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        table: pa.Table,
        names: list[str],
        x: np.ndarray,
        cond: np.ndarray | None,
        labels: int,
        config: TextModelConfig,
        train: TrainSpec,
        device: torch.device,
        min_rows: int,
        checkpoints: CheckpointStore | None,
    ) -> tuple[TextColumns, dict[str, dict[str, Any]]]:
        """A model per column of ``names`` (each text given ``x`` and ``cond``); their reports."""
        context = _context(x, cond, labels)
        columns, reports = [], {}
        for number, name in enumerate(names):
            values = [None if v is None else str(v) for v in table.column(name).to_pylist()]
            present = [v for v in values if v is not None]
            tokenizer = train_tokenizer(present, config.vocab_size, min_rows)
            rare = rare_runs(present, min_rows)
            net = TextNet(context.shape[1], tokenizer.get_vocab_size(), config, len(rare)).to(device)
            net.rare.copy_(torch.from_numpy(rare))
            column = TextColumn(name, config, tokenizer, net, any(v is None for v in values))
            sequences = column.encode(values)
            store = checkpoints.child(f"text-{number}") if checkpoints is not None else None
            reports[name] = _train(column, sequences, context, train, device, store)
            columns.append(column)
        return cls(columns, context.shape[1], labels), reports

    def fill(self, table: pa.Table, x: np.ndarray, cond: np.ndarray | None, seed: int) -> pa.Table:
        """``table`` with each text column written given its rows' encoded ``x`` and ``cond``;
        :attr:`redrawn` counts, per column, the texts drawn again or replaced (memorisation
        prevented)."""
        if not self.columns:
            return table
        context = torch.from_numpy(_context(x, cond, self.labels))
        for number, column in enumerate(self.columns):
            generator = torch.Generator(device=column.net.rare.device).manual_seed(
                (seed * 7919 + number) % 2**63
            )
            texts, redrawn = [], 0
            device = column.net.rare.device
            # float32 on a CPU whatever generate.precision says: a text model's products are too
            # small for bfloat16 to gain (ChatterBot on AMX: 17–18k tokens/s against 20.8k)
            with torch.autocast("cpu", enabled=False) if device.type == "cpu" else contextlib.nullcontext():
                for start in range(0, len(context), SAMPLE_CHUNK):
                    chunk = context[start : start + SAMPLE_CHUNK].to(device)
                    drawn, again = _safe_draw(column, chunk, generator)
                    texts += drawn
                    redrawn += again
            self.redrawn[column.name] = self.redrawn.get(column.name, 0) + redrawn
            index = table.schema.get_field_index(column.name)
            target = table.schema.field(index)
            table = table.set_column(index, target, pa.array(texts, pa.string()).cast(target.type))
        return table

    def networks(self) -> dict[str, nn.Module]:
        return {f"text.{number}": column.net for number, column in enumerate(self.columns)}

    def to_state(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "labels": self.labels,
            "columns": [
                {
                    "name": c.name,
                    "config": c.config.model_dump(mode="json"),
                    "tokenizer": c.tokenizer.to_str(),
                    "nullable": c.nullable,
                    "rare": int(c.net.rare.numel()),
                }
                for c in self.columns
            ],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, device: torch.device) -> TextColumns:
        """Networks built to the saved shapes (weights are loaded afterwards)."""
        if not state:
            return cls([], 0, 0)
        columns = []
        for saved in state["columns"]:
            config = TextModelConfig.model_validate(saved["config"])
            tokenizer = load_tokenizer(saved["tokenizer"])
            net = TextNet(state["context"], tokenizer.get_vocab_size(), config, saved["rare"]).to(device)
            columns.append(TextColumn(saved["name"], config, tokenizer, net, saved["nullable"]))
        return cls(columns, state["context"], state["labels"])


def _context(x: np.ndarray, cond: np.ndarray | None, labels: int) -> np.ndarray:
    """The encoded rows and their labels' one-hot: what the prefix is computed from."""
    parts = [np.asarray(x, dtype=np.float32)]
    if labels and cond is not None:
        parts.append(np.eye(labels, dtype=np.float32)[np.asarray(cond, dtype=np.int64)])
    matrix = np.concatenate(parts, axis=1) if parts else np.zeros((len(x), 0), np.float32)
    return matrix if matrix.shape[1] else np.zeros((len(x), 1), np.float32)


def _train(
    column: TextColumn,
    sequences: list[list[int]],
    context: np.ndarray,
    train: TrainSpec,
    device: torch.device,
    checkpoints: CheckpointStore | None,
) -> dict[str, Any]:
    """Teacher-forced next-token training with the pipeline's loop; held-out perplexity reported."""
    config, pad = column.config, column.special[PAD]
    length = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), length), pad, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tokens[row, : len(sequence)] = torch.tensor(sequence)
    net = column.net
    optimizer = adamw(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

    def loss_of(ctx: torch.Tensor, toks: torch.Tensor) -> torch.Tensor:
        """The mean next-token loss; the batch sorted by length and run in :data:`LENGTH_GROUPS`
        groups, each cut to its longest text: a batch of short texts and one long one would
        otherwise pay for the long one in every row (measured 3× faster on the ChatterBot corpus)."""
        lengths = (toks != pad).sum(dim=1)
        order = lengths.argsort()
        total = torch.zeros((), device=toks.device)
        for group in order.tensor_split(min(LENGTH_GROUPS, len(order))):
            longest = int(lengths[group].max())
            part = toks[group, :longest]
            logits, _ = net(ctx[group], part[:, :-1])
            total = total + F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                part[:, 1:].reshape(-1),
                ignore_index=pad,
                reduction="sum",
            )
        return total / (lengths - 1).sum().clamp(min=1)

    def step(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        loss = optimise(
            loss_of,
            batch,
            optimizer,
            networks={"net": net},
            private=None,
            max_norm=1.0,
            name=f"text {column.name}",
        )
        return {"loss": loss}

    spec = train.model_copy(
        update={
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "early_stopping_patience": train.early_stopping_patience or 3,
        }
    )
    report: FitReport = fit_loop(
        name=f"text {column.name}",
        modules={"net": net},
        optimizers={"net": optimizer},
        step=step,
        data=(torch.from_numpy(context), tokens),
        train=spec,
        device=device,
        checkpoints=checkpoints,
        evaluate=lambda batch: loss_of(*batch),
    )
    result = report.to_dict()
    if report.validation_loss is not None:
        result["validation_perplexity"] = math.exp(report.validation_loss)
        result["curve"] = [[seconds, math.exp(loss)] for seconds, loss in report.curve]  # perplexity
    result["vocabulary"] = column.tokenizer.get_vocab_size()
    result["tokens"] = int(sum(len(s) - 1 for s in sequences))
    return result


def _safe_draw(
    column: TextColumn, context: torch.Tensor, generator: torch.Generator
) -> tuple[list[str | None], int]:
    """Texts for ``context``'s rows, none holding a rare training run (see the module's doc);
    how many were drawn again or replaced."""
    texts = [column.decode(s) for s in column.draw(context, generator)]
    leaking = [i for i, text in enumerate(texts) if column.leaks(text)]
    touched, heat = len(leaking), 1.0
    for _ in range(REDRAWS):
        if not leaking:
            break
        heat += REDRAW_HEAT  # a model sure of a real sentence is drawn from less surely
        for i, sequence in zip(leaking, column.draw(context[leaking], generator, heat)):
            texts[i] = column.decode(sequence)
        leaking = [i for i in leaking if column.leaks(texts[i])]
    refused = set(leaking)
    safe = [i for i in range(len(texts)) if i not in refused]
    for i in leaking:  # still leaking: another row's text that passed (or null, when none did)
        texts[i] = texts[safe[i % len(safe)]] if safe else None
    if leaking and not safe:
        log.warning(
            "text %s: every text drawn for %d rows held a sentence fewer than min_rows real texts hold "
            "(the column's texts may all be unique: ids, numbers); written as null",
            column.name,
            len(leaking),
        )
    return texts, touched
