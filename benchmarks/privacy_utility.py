"""Privacy and utility of synthetic tables against a real holdout, ours and the peers' in one run.

    python benchmarks/privacy_utility.py --dataset adult --synthesizer vae --minutes 3
    python benchmarks/privacy_utility.py --dataset adult --synthesizer ctgan --epochs 50   # needs sdv
    python benchmarks/privacy_utility.py --dataset adult --synthesizer real     # the ideal: unseen real rows
    python benchmarks/privacy_utility.py --dataset adult --synthesizer copies   # the worst: training rows

Adult's training rows (``adult.data``) train the synthesizer and its test rows (``adult.test``) are
the holdout; penguins is split as the pipeline's ingest splits it (``validate.holdout`` 0.2). The
scores are the validate stage's (``genai_pipeline.quality.privacy`` / ``.utility``): DCR share,
memorised share, NNDR against the holdout's own, new-row share, and TSTR/TRTR on the label column,
each with its wall time. SDV's CTGAN/TVAE run when ``sdv`` is importable (the peers' virtualenv of
``peers.py``, which also has this project installed).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pyarrow as pa
from benchmark_data import load_adult

from genai_pipeline.datasets import BUILTINS, TabularData
from genai_pipeline.datasets.base import fingerprint, split_holdout
from genai_pipeline.quality.privacy import privacy_scores
from genai_pipeline.quality.tabular import new_row_share
from genai_pipeline.quality.utility import utility_scores

OURS = ("gan", "vae", "diffusion", "autoregressive")
PEERS = ("ctgan", "tvae")


def _split(dataset: str) -> tuple[pa.Table, pa.Table, str]:
    if dataset == "adult":
        return load_adult("train"), load_adult("test"), "income"
    data = TabularData(BUILTINS["penguins"].load(), "species")
    train, holdout = split_holdout(data, 0.2, 5_000, key=fingerprint(data))
    assert isinstance(train, TabularData) and isinstance(holdout, TabularData)
    return train.table, holdout.table, "species"


def _ours(train: pa.Table, label: str, args: argparse.Namespace) -> pa.Table:
    import torch

    from genai_pipeline.config import TrainSpec
    from genai_pipeline.models import model_class

    cls = model_class("tabular", args.synthesizer)
    model = cls(cls.Config.model_validate({}), device=torch.device("cpu"))
    spec = TrainSpec(epochs=10_000, batch_size=500, device="cpu", seed=args.seed, max_minutes=args.minutes)
    report = model.fit(TabularData(train, label=label), spec, None)
    print(f"fit: {report.steps} steps in {report.seconds:.1f} s ({report.stopped})")
    return pa.concat_tables(model.sample(args.rows, conditions=None, seed=args.seed, batch_size=50_000))


def _peer(train: pa.Table, args: argparse.Namespace) -> pa.Table:
    from peers import fit_and_sample

    _, sampled, fit_seconds, _ = fit_and_sample(train.to_pandas(), args.synthesizer, args.epochs, args.rows)
    print(f"fit: {args.epochs} epochs in {fit_seconds:.1f} s")
    return pa.Table.from_pandas(sampled, preserve_index=False).cast(train.schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="penguins", choices=["penguins", "adult"])
    parser.add_argument("--synthesizer", required=True, choices=[*OURS, *PEERS, "real", "copies"])
    parser.add_argument("--minutes", type=float, default=3.0, help="our models' training budget")
    parser.add_argument("--epochs", type=int, default=50, help="the peers' epochs")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    train, holdout, label = _split(args.dataset)
    if args.synthesizer == "real":  # unseen real rows: half the holdout is the "synthetic" sample
        order = np.random.default_rng(args.seed).permutation(holdout.num_rows)
        synthetic, holdout = holdout.take(order[: len(order) // 2]), holdout.take(order[len(order) // 2 :])
    elif args.synthesizer == "copies":
        synthetic = train.slice(0, args.rows)
    elif args.synthesizer in OURS:
        synthetic = _ours(train, label, args)
    else:
        synthetic = _peer(train, args)
    print(
        f"{args.synthesizer} on {args.dataset}: {train.num_rows} training, {holdout.num_rows} holdout, "
        f"{synthetic.num_rows} synthetic rows"
    )
    started = time.perf_counter()
    privacy = privacy_scores(train, holdout, synthetic, seed=args.seed)
    privacy_seconds = time.perf_counter() - started
    started = time.perf_counter()
    copies = new_row_share(train, synthetic)
    new_rows_seconds = time.perf_counter() - started
    started = time.perf_counter()
    utility = utility_scores(train, holdout, synthetic, label, seed=args.seed)
    utility_seconds = time.perf_counter() - started
    print(
        f"dcr_share {privacy.dcr_share:.3f} memorised_share {privacy.memorised_share:.3f} "
        f"nndr {privacy.nndr:.3f} (holdout {privacy.holdout_nndr:.3f}) [{privacy_seconds:.1f} s]; "
        f"new_row_share {copies:.3f} [{new_rows_seconds:.2f} s]"
    )
    if utility is not None:
        print(
            f"tstr {utility.tstr:.3f} trtr {utility.trtr:.3f} utility_ratio {utility.ratio:.3f} "
            f"({utility.task} on {label}) [{utility_seconds:.1f} s]"
        )


if __name__ == "__main__":
    main()
