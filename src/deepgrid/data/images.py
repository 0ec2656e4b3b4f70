"""``dataset: images``: a folder of images per class (torchvision's ImageFolder layout).

``data_dir/train/<class>/*.png`` (or .jpg, .jpeg, .bmp, .gif, .webp) and the same under
``data_dir/test``. Classes are the sub-folder names in sorted order (label 0 the first), and
the test split must have the same class folders. Each image is read with Pillow, converted
to grayscale (one channel) or RGB (three, ``image_mode: rgb``) and resized to a square whose
side network.n_in gives: n_in = channels * side * side (784: 28 x 28 grayscale, 3072: 32 x 32
RGB). Pixels come out as bytes, scaled to [0, 1] as MNIST's are; RGB is stored channel-last
(H, W, C) before flattening.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from deepgrid.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def image_side(n_in: int, mode: str) -> int:
    """The square side the images are resized to, or a DataError when n_in gives none."""
    channels = 3 if mode == "rgb" else 1
    side = math.isqrt(n_in // channels)
    if side * side * channels != n_in:
        raise DataError(f"dataset images with image_mode {mode} needs network.n_in = {channels} x side x side "
                        f"(e.g. {channels * 28 * 28} for 28 x 28); {n_in} is not.")
    return side


def class_names(folder: Path) -> list[str]:
    """The class sub-folders of one split, sorted: their positions are the labels."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; dataset images reads data_dir/train/<class>/ and "
                        "data_dir/test/<class>/.")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{folder}: no class folders; put each class's images in a folder of its own under it.")
    return names


def image_files(folder: Path, *, n_in: int, mode: str, limit: int | None = None,
                classes: list[str] | None = None) -> list[tuple[Path, int]]:
    """(path, label) of every image under ``folder``'s class folders, in the order they are read.

    ``classes``: the training split's class names, so a test split labels alike (by default
    the train split's folders next to ``folder``, else its own). ``limit`` keeps that many,
    spread over the classes.
    """
    image_side(n_in, mode)  # n_in must give a square before any folder is listed
    own = class_names(folder)
    if classes is None:
        train = folder.parent / "train"
        classes = class_names(train) if folder.name != "train" and train.is_dir() else own
    unknown = [name for name in own if name not in classes]
    if unknown:
        raise DataError(f"{folder / unknown[0]}: a class folder the training split does not have "
                        f"(its classes: {', '.join(classes)}).")
    files = [(path, label) for label, name in enumerate(classes) if (folder / name).is_dir()
             for path in sorted((folder / name).iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders.")
    if limit is not None:
        # Spread over the classes rather than the first class only: the same shuffle every time.
        order = np.random.default_rng(0).permutation(len(files))[:limit]
        files = [files[i] for i in sorted(order)]
    return files


def read_image(path: Path, *, n_in: int, mode: str) -> np.ndarray:
    """One image's pixels (n_in,) uint8: converted to ``mode`` and resized to the side n_in gives."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError("dataset images needs Pillow, which is not installed; pip install pillow.") from None
    side = image_side(n_in, mode)
    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if mode == "rgb" else "L").resize((side, side), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8).reshape(-1)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e}).") from None


def read_image_folder(folder: Path, *, n_in: int, mode: str, limit: int | None = None,
                      classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (N, n_in) uint8, labels (N,)) of every image under ``folder``'s class folders
    (:func:`image_files` says which, and in what order)."""
    files = image_files(folder, n_in=n_in, mode=mode, limit=limit, classes=classes)
    pixels = np.empty((len(files), n_in), dtype=np.uint8)
    labels = np.empty(len(files), dtype=np.int64)
    for i, (path, label) in enumerate(files):
        pixels[i] = read_image(path, n_in=n_in, mode=mode)
        labels[i] = label
    return pixels, labels
