"""The DP peer on Adult: MOSTLY AI's TabularARGN (``mostlyai-engine``), trained on CPU under a DP budget.

    python -m venv .venv-peers && .venv-peers/bin/pip install torch==2.13.0 && \\
        .venv-peers/bin/pip install mostlyai-engine==2.7.3 && \\
        .venv-peers/bin/pip uninstall -y torchvision torchaudio && .venv-peers/bin/pip install --no-deps -e .
    cd benchmarks && ../.venv-peers/bin/python peer_mostly.py --epsilon 3 --out /tmp/mostly-eps3
    cd benchmarks && ../.venv-peers/bin/python peer_mostly.py --epsilon none --out /tmp/mostly-nodp

torch goes in first, on its own (the CPU wheel); the engine drags in CUDA torchvision/torchaudio,
which it never imports for tabular data and which break ``import transformers``, so they come out.
Everything else is the engine's default (model MOSTLY_AI/Medium, value protection on) except the
time and epoch budgets. The engine's ``max_epsilon`` is a total: the value-protection analysis spends
``value_protection_epsilon`` (engine default 1.0) before training, DP-SGD (Opacus, RDP accountant,
at the whole ``delta``) the rest. It checks the budget only at epoch ends and keeps the last
best-validation checkpoint still under it, so ``run.json`` reports the epsilon of the weights it
kept (from the saved accountant) next to the last epsilon it logged. Writes ``<out>/synthetic.parquet``
(cast to the real table's schema) and ``<out>/run.json``; fidelity is scored by
``genai_pipeline.quality.tabular`` on up to ``--score-rows`` rows, as in ``peers.py``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_data import load_adult  # noqa: E402

from genai_pipeline.quality.tabular import column_shapes, pair_trends_score  # noqa: E402


def spent_epsilon(model_dir: Path, delta: float, value_protection_epsilon: float) -> float | None:
    """The epsilon of the kept checkpoint: its saved RDP accountant at ``delta`` plus value protection."""
    from opacus.accountants import RDPAccountant

    path = model_dir / "dp-accountant.pt"
    if not path.exists():
        return None
    accountant = RDPAccountant()
    accountant.load_state_dict(torch.load(path, weights_only=False))
    return accountant.get_epsilon(delta) + value_protection_epsilon


def main() -> None:
    from mostlyai.engine import TabularARGN
    from mostlyai.engine.domain import DifferentialPrivacyConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", required=True, help="total max_epsilon, or 'none' for no DP")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument(
        "--value-protection-epsilon",
        type=float,
        default=None,
        help="the engine's share for its statistics (its default, 1.0, leaves nothing to train at ε = 1)",
    )
    parser.add_argument("--max-minutes", type=float, default=5.0, help="training time budget")
    parser.add_argument("--epochs", type=float, default=100.0, help="max_epochs (engine default 100)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--score-rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)

    dp = None  # a DifferentialPrivacyConfig, not a dict: analyze() reads its attributes
    if args.epsilon.lower() != "none":
        options = {"max_epsilon": float(args.epsilon), "delta": args.delta}
        if args.value_protection_epsilon is not None:
            options["value_protection_epsilon"] = args.value_protection_epsilon
        dp = DifferentialPrivacyConfig(**options)
    real = load_adult()
    with tempfile.TemporaryDirectory(prefix="peer_mostly_") as workspace:
        model = TabularARGN(
            max_training_time=args.max_minutes, max_epochs=args.epochs, differential_privacy=dp,
            device="cpu", workspace_dir=workspace, random_state=args.seed, verbose=1,
        )  # fmt: skip
        started = time.perf_counter()
        model.fit(real.to_pandas())
        fit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        sampled = model.sample(n_samples=args.rows, device="cpu")
        sample_seconds = time.perf_counter() - started
        store = Path(workspace) / "ModelStore"
        progress = pd.read_csv(store / "model-data" / "progress-messages.csv")
        stats = json.loads((store / "tgt-stats" / "stats.json").read_text())
        vp_epsilon = stats.get("value_protection_epsilon_spent") or 0.0
        kept_epsilon = spent_epsilon(store / "model-data", args.delta, vp_epsilon) if dp else None

    synthetic = pa.Table.from_pandas(sampled[real.schema.names], preserve_index=False)
    synthetic = synthetic.cast(real.schema, safe=False)
    args.out.mkdir(parents=True, exist_ok=True)
    pq.write_table(synthetic, args.out / "synthetic.parquet")
    scored = synthetic.slice(0, args.score_rows)
    shapes = float(np.mean(list(column_shapes(real, scored).values())))
    pairs = pair_trends_score(real, scored)
    logged = progress["dp_eps"].dropna() if "dp_eps" in progress else pd.Series(dtype=float)
    run = {
        "engine": "mostlyai-engine TabularARGN",
        "versions": {p: version(p) for p in ("mostlyai-engine", "torch", "opacus")},
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "differential_privacy": dp.model_dump() if dp else None,
        "training_rows": real.num_rows,
        "fit_seconds": round(fit_seconds, 2),
        "sample_seconds": round(sample_seconds, 2),
        "sampled_rows": synthetic.num_rows,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "epochs_trained": float(progress["epoch"].max()),
        "value_protection_epsilon_spent": vp_epsilon if dp else None,
        "epsilon_spent_kept_model": kept_epsilon,
        "epsilon_last_logged": float(logged.iloc[-1]) if len(logged) else None,
        # the engine keeps (and samples from) weights over budget when no epoch ended under it
        "kept_model_within_budget": kept_epsilon <= dp.max_epsilon if dp and kept_epsilon else None,
        "progress": progress.to_dict(orient="records"),
        "column_shapes": round(shapes, 4),
        "pair_trends": round(pairs, 4),
    }
    (args.out / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in run.items() if k != "progress"}, indent=2, default=str))


if __name__ == "__main__":
    main()
