"""Write scikit-learn's 8×8 digits as a user would bring images: an ImageFolder tree of PNGs.

    python benchmarks/make_image_folder.py /tmp/digits-folder

One sub-folder per class, named in words (``zéro`` … ``neuf``: non-ASCII labels travel through the
pipeline as they are), colour PNGs at 16×16, so the benchmark reads them through the same ingest
code a job uses (``--dataset /tmp/digits-folder --format imagefolder``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from genai_pipeline.datasets import BUILTINS

NAMES = ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"]
#: each class drawn in its own colour, so a model must get colour and shape right together
COLOURS = np.array([[255, 80, 80], [80, 255, 80], [80, 80, 255], [255, 255, 80], [255, 80, 255]])


def main(root: Path) -> None:
    images, labels = BUILTINS["digits"].load()
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        tint = COLOURS[int(label) % len(COLOURS)] / 255
        rgb = (image.astype(float) * tint).astype(np.uint8)
        folder = root / NAMES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).resize((16, 16), Image.Resampling.BILINEAR).save(folder / f"{index:05d}.png")
    print(f"{len(images)} images in {root}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
