"""The shared training loop: resume gives the same result, divergence fails fast, budgets stop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genai_pipeline.config import TrainSpec
from genai_pipeline.errors import ConfigError, TrainingDiverged
from genai_pipeline.storage import Storage
from genai_pipeline.training import CheckpointStore, fit_loop, resolve_device


class Crash(Exception):
    pass


def _problem(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, tuple[torch.Tensor, ...]]:
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 1)
    data = (torch.randn(100, 3), torch.randn(100, 1))
    return net, torch.optim.SGD(net.parameters(), lr=0.05), data


def _train(
    checkpoints: CheckpointStore | None, crash_at: int | None = None, **spec
) -> tuple[torch.nn.Module, object]:
    net, optimizer, data = _problem()
    calls = {"n": 0}

    def step(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise Crash()
        x, y = batch
        loss = torch.nn.functional.mse_loss(net(x) + 0.01 * torch.randn_like(y), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}

    train = TrainSpec(epochs=4, batch_size=16, device="cpu", seed=5, checkpoint_every=7, **spec)
    report = fit_loop(
        name="toy",
        modules={"net": net},
        optimizers={"sgd": optimizer},
        step=step,
        data=data,
        train=train,
        device=torch.device("cpu"),
        checkpoints=checkpoints,
    )
    return net, report


def test_resumed_training_matches_uninterrupted_training(tmp_path: Path) -> None:
    reference, report = _train(None)
    assert report.steps == 4 * (100 // 16)
    store = CheckpointStore(Storage(str(tmp_path)), "ckpt")
    with pytest.raises(Crash):
        _train(store, crash_at=17)
    resumed, resumed_report = _train(store)
    assert resumed_report.resumed_from_step == 14  # the last checkpoint before the crash
    assert resumed_report.steps == report.steps  # the step counter continues, not doubled
    for a, b in zip(reference.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_checkpoints_load_without_unpickling_and_a_bad_one_never_blocks_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint that is not plain tensors is refused without running it; it, or a damaged one,
    is removed so that the model key it lives under trains again (it used to fail every run)."""
    store = CheckpointStore(Storage(str(tmp_path)), "ckpt")
    store.save({"weights": torch.ones(2), "step": 3})
    assert store.load()["step"] == 3

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    import io

    buffer = io.BytesIO()
    torch.save({"payload": Evil()}, buffer)
    for blob in (buffer.getvalue(), buffer.getvalue()[:100], b"not a checkpoint"):
        Storage(str(tmp_path)).write_bytes("ckpt/latest.pt", blob)
        with caplog.at_level("WARNING", logger="genai_pipeline.training"):
            assert store.load() is None
        assert "not a loadable checkpoint" in caplog.text and not (tmp_path / "ckpt" / "latest.pt").exists()
    assert "pwned" not in capsys.readouterr().out
    _, report = _train(store)  # and training starts over
    assert report.resumed_from_step == 0 and report.steps > 0


def test_nan_loss_fails_fast_with_the_step() -> None:
    net, optimizer, data = _problem()

    def step(batch: tuple[torch.Tensor, ...]) -> dict[str, float]:
        return {"loss": float("nan")}

    with pytest.raises(TrainingDiverged, match=r"toy: loss loss became nan at step 1 \(epoch 1\)"):
        fit_loop(
            name="toy",
            modules={"net": net},
            optimizers={},
            step=step,
            data=data,
            train=TrainSpec(epochs=1, device="cpu"),
            device=torch.device("cpu"),
        )


def test_time_budget_stops_training() -> None:
    _, report = _train(None, max_minutes=1e-9)
    assert report.stopped == "time budget" and report.steps == 1


def test_devices() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device: cuda was requested"):
            resolve_device("cuda")


def test_early_stopping_restores_the_best_weights() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    data = (torch.randn(200, 3), torch.randn(200, 1))  # pure noise: validation stops improving fast
    evaluated = []

    def loss(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.nn.functional.mse_loss(net(batch[0]), batch[1])

    def step(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        value = loss(batch)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        return {"loss": value.detach()}

    def evaluate(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        value = loss(batch)
        evaluated.append(float(value))
        return value

    train = TrainSpec(
        epochs=200, batch_size=20, device="cpu", early_stopping_patience=3, validation_fraction=0.2
    )
    report = fit_loop(
        name="toy",
        modules={"net": net},
        optimizers={"sgd": optimizer},
        step=step,
        data=data,
        train=train,
        device=torch.device("cpu"),
        evaluate=evaluate,
    )
    assert report.stopped == "early stop" and report.epochs < 200
    assert report.steps == report.epochs * (160 // 20)  # 40 rows held out
    epoch_means = [sum(evaluated[i : i + 2]) / 2 for i in range(0, len(evaluated), 2)]  # 2 batches of 20
    assert report.validation_loss == pytest.approx(min(epoch_means), rel=1e-5)  # the best is restored
    assert min(epoch_means) < epoch_means[-1]
    # the curve: each epoch's validation loss, at the training seconds it was reached
    assert [loss for _, loss in report.curve] == pytest.approx(epoch_means, rel=1e-5)
    seconds = [point[0] for point in report.curve]
    assert len(seconds) == report.epochs and seconds == sorted(seconds) and seconds[-1] <= report.seconds


def test_moving_average_warms_up_from_the_optimiser_step() -> None:
    from genai_pipeline.training import frozen_copy, update_ema

    net = torch.nn.Linear(2, 1)
    average = frozen_copy(net)
    assert not any(p.requires_grad for p in average.parameters())
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.ones(1, 2)).sum().backward()
    optimizer.step()  # Adam's step count is now 1: the decay is min(0.999, 2 / 11)
    before = [p.clone() for p in average.parameters()]
    update_ema(average, net, optimizer, decay=0.999)
    for old, new, target in zip(before, average.parameters(), net.parameters()):
        assert torch.allclose(new, old + (target - old) * (1 - 2 / 11))
