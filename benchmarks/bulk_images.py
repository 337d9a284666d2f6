"""Bulk image generation end to end: sample, PNG-encode, write to local disk or S3; images/s.

    python benchmarks/bulk_images.py train --family gan --minutes 0.5 --model-dir /tmp/bulk-images
    python benchmarks/bulk_images.py generate --family gan --images 100000 --target s3 \\
        --model-dir /tmp/bulk-images
    python benchmarks/bulk_images.py encoders

``train`` fits a family's default configuration on the built-in MNIST sample under a short budget
and saves it as the pipeline does; throughput does not depend on how well it was trained (DDPM
samples with its default few-step sampler). ``generate`` — one process per run, so the peak RSS is
its own — loads it, times sampling alone on a few batches, then streams ``--images`` images
through the generate stage's writer (``generation.write_images``: PNGs encoded on every core and
stored while the next batch is sampled, the Parquet manifest last) into a run's staging area on
local disk or on S3 over HTTP (a moto server started here, in its own process, on 127.0.0.1).
``encoders`` compares PNG encoding serially, in a thread pool and in a process pool, and times the
local disk's creation of small files.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import s3fs
import torch

from genai_pipeline.config import DatasetSpec, TrainSpec
from genai_pipeline.datasets.sources import read_dataset
from genai_pipeline.generation import encode_png, write_images
from genai_pipeline.jobs import build_job
from genai_pipeline.models import load_model, model_class
from genai_pipeline.models.base import sampling_precision
from genai_pipeline.runs import Run
from genai_pipeline.storage import Storage

S3_KEY, S3_SECRET, BUCKET = "bench-key", "bench-secret", "bench"


@contextmanager
def s3_endpoint() -> Iterator[dict[str, str]]:
    """A moto S3 server in its own process on a free 127.0.0.1 port, with one bucket."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": S3_KEY, "secret": S3_SECRET}
    try:
        fs = s3fs.S3FileSystem(**options)
        for _ in range(100):
            try:
                fs.mkdir(BUCKET)
                break
            except Exception:
                time.sleep(0.1)
        yield options
    finally:
        server.terminate()
        server.wait()


def _encode_many(images: np.ndarray) -> list[bytes]:
    return [encode_png(image) for image in images]


def encoders(count: int = 8000) -> None:
    """PNG encoding of MNIST- and CIFAR-shaped images: serially, in threads, in processes."""
    rng = np.random.default_rng(0)
    cores = multiprocessing.cpu_count()
    for shape in [(28, 28, 1), (32, 32, 3)]:
        images = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        images[:, : shape[0] // 3] = 0  # some flat background, as digits have
        chunks = np.array_split(images, 64)
        rates = {}
        started = time.perf_counter()
        _encode_many(images)
        rates["serial"] = count / (time.perf_counter() - started)
        for name, pool in [
            ("threads", ThreadPoolExecutor(cores)),
            ("processes", ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn"))),
        ]:
            with pool:
                list(pool.map(_encode_many, chunks[:cores]))  # warm up (processes start)
                started = time.perf_counter()
                list(pool.map(_encode_many, chunks))
                rates[name] = count / (time.perf_counter() - started)
        print(f"{shape}: " + ", ".join(f"{name} {rate:,.0f} images/s" for name, rate in rates.items()))
    with tempfile.TemporaryDirectory() as folder:  # where `generate` writes: the disk's own rate
        started = time.perf_counter()
        for index in range(count):
            with open(f"{folder}/{index}.png", "wb") as handle:
                handle.write(b"x" * 700)
        rate = count / (time.perf_counter() - started)
        print(f"local disk ({folder}): {rate:,.0f} 700-byte files/s from one thread")
    with s3_endpoint() as options:  # the S3 server's own ceiling: PUTs of ready bytes, 64 at once
        fs = s3fs.S3FileSystem(**options)
        started = time.perf_counter()
        fs.pipe({f"{BUCKET}/ceiling/{index}.png": b"x" * 700 for index in range(count // 2)}, batch_size=64)
        print(f"S3 endpoint: {count // 2 / (time.perf_counter() - started):,.0f} 700-byte PUTs/s (s3fs pipe)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["train", "generate", "encoders"])
    parser.add_argument("--family")
    parser.add_argument("--model-dir")
    parser.add_argument("--minutes", type=float, default=0.5, help="training budget")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--target", choices=["local", "s3"], default="local")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto")
    args = parser.parse_args()
    if args.mode == "encoders":
        encoders()
        return
    storage = Storage(args.model_dir)
    if args.mode == "train":
        cls = model_class("image", args.family)
        model = cls(cls.Config.model_validate({}), device=torch.device("cpu"))
        spec = TrainSpec(epochs=10_000, batch_size=64, device="cpu", max_minutes=args.minutes)
        report = model.fit(read_dataset(DatasetSpec(uri="builtin://mnist")), spec, None)
        model.save(storage, args.family)
        print(f"{args.family}: {report.steps} steps in {report.seconds:.0f} s, saved in {args.model_dir}")
        return
    model = load_model(storage, args.family, torch.device("cpu"))
    probe = min(args.images, 4 * args.batch_size)
    started = time.perf_counter()
    with sampling_precision(model, args.precision):
        for _ in model.sample(probe, conditions=None, seed=1, batch_size=args.batch_size):
            pass
    sample_rate = probe / (time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as local, s3_endpoint() if args.target == "s3" else _no_s3() as s3:
        output = f"s3://{BUCKET}/out" if s3 else local
        job = build_job(
            {
                "name": f"bulk-{args.family}",
                "dataset": {"uri": "builtin://mnist"},
                "model": {"family": args.family},
                "export": {"output": output, "storage_options": s3 or {}},
            }
        )
        run = Run(job=job, run_date="2026-11-25")
        started = time.perf_counter()
        with sampling_precision(model, args.precision):
            count = write_images(
                model.sample(args.images, conditions=None, seed=0, batch_size=args.batch_size),
                run.storage(),
                run,
                model_name=args.family,
            )
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before listing the files
        stored = len(run.storage().list_files(run.staged("images")))
    assert stored == count == args.images, (stored, count)
    print(
        f"{args.family} ({args.precision}) → {args.target}: {count:,} images in {seconds:.1f} s = "
        f"{count / seconds:,.0f} images/s end to end (sampling alone {sample_rate:,.0f}/s), "
        f"peak RSS {peak:.0f} MB"
    )


@contextmanager
def _no_s3() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    main()
