"""Ingest of an unchanged source with and without ``dataset.cache``, from S3 over HTTP.

    python benchmarks/make_image_folder.py /tmp/digits-folder
    python benchmarks/ingest_cache.py /tmp/digits-folder

Uploads the image folder to moto's S3 server on 127.0.0.1 (a real HTTP endpoint through s3fs, as in
the tests) and times the ingest stage: without the cache (every night downloads and decodes every
image), a cache miss (the same, plus keeping a copy) and cache hits (the source's listing — sizes
and ETags — is unchanged, so the copy is read instead).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import tempfile
import time

import s3fs
from moto.server import ThreadedMotoServer

from genai_pipeline import stages
from genai_pipeline.jobs import build_job
from genai_pipeline.runs import Run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=pathlib.Path, help="an ImageFolder tree (make_image_folder.py)")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    options = {"key": "bench", "secret": "bench", "endpoint_url": f"http://{host}:{port}"}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("bench")
    files = {f"bench/images/{p.relative_to(args.folder)}": p.read_bytes() for p in args.folder.rglob("*.png")}
    fs.pipe(files, batch_size=64)
    output = tempfile.mkdtemp(prefix="ingest-cache-")

    def ingest(cache: bool) -> float:
        job = build_job(
            {
                "name": "cache-bench",
                "dataset": {
                    "uri": "s3://bench/images",
                    "format": "imagefolder",
                    "cache": cache,
                    "storage_options": options,
                },
                "model": {"family": "vae"},
                "export": {"output": output},
            }
        )
        started = time.perf_counter()
        stages.ingest(Run(job=job, run_date="2026-01-01"))
        return time.perf_counter() - started

    ingest(False)  # warm-up: imports, the GX context
    timings = {
        "no cache": ingest(False),
        "miss": ingest(True),
        "hit": ingest(True),
        "hit again": ingest(True),
    }
    print(f"{len(files)} images on S3 over HTTP: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    server.stop()


if __name__ == "__main__":
    main()
