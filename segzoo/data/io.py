"""Reading images and masks from disk, with one clear error per bad file.

Only Pillow, numpy and torch: the predictor uses this without importing torchvision.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "DataError",
    "check_relative_name",
    "list_images",
    "read_image",
    "read_mask",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp", ".pgm")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def check_relative_name(name: str, where: str, *, folders: bool = False) -> str:
    """``name`` (read from a split file or an annotation file) if it names a file inside the
    dataset folder; a :class:`DataError` naming ``where`` otherwise.

    Dataset files are untrusted: an absolute path, a ``..`` part or (unless ``folders``) any path
    separator would let them read files outside the dataset.
    """
    parts = name.replace("\\", "/").split("/")
    bad = (
        not name
        or "\0" in name
        or name.startswith(("/", "\\"))
        or (len(name) > 1 and name[1] == ":")  # a Windows drive
        or any(p in ("", ".", "..") for p in parts)
        or (not folders and len(parts) > 1)
    )
    if bad:
        if folders:
            rule = "a relative path inside the dataset folder (no absolute path, no '..')"
        else:
            rule = "a file name without folders (no '/', '\\', '..' or absolute path)"
        raise DataError(
            f"{where}: {name!r} is not {rule}: dataset files may only name files inside the dataset"
        )
    return name


def _open(path: str | os.PathLike[str], what: str, upright: bool = True) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{what} {path} is empty (0 bytes): re-export it or remove it from the dataset")
    try:
        img = Image.open(path)
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(
            f"cannot read {what} {path} ({type(err).__name__}: {err}): check that it is a complete "
            f"image file ({', '.join(IMAGE_EXTENSIONS)}), re-export it or remove it from the dataset"
        ) from None
    return ImageOps.exif_transpose(img) if upright else img


def read_image(path: str | os.PathLike[str], *, upright: bool = True) -> torch.Tensor:
    """An image file as a 3 x H x W uint8 RGB tensor, upright per its EXIF orientation (or as
    stored with ``upright=False``, for annotations drawn on the stored pixels, as COCO's are).

    Grayscale is repeated to three channels, alpha is dropped, palette images are expanded and
    16-bit images are scaled to 8 bits.
    """
    img = _open(path, "image", upright)
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img).astype(np.float64) * (255.0 / 65535.0)
        arr = np.repeat(np.round(arr).clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
    elif img.mode == "F":
        raise DataError(
            f"image {path} holds floating-point pixels (mode F): convert it to an 8-bit RGB or grayscale image"
        )
    else:
        arr = np.array(img.convert("RGB"))
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def read_mask(path: str | os.PathLike[str]) -> torch.Tensor:
    """A mask file as an H x W int64 tensor of class indices.

    Masks hold one class index per pixel: an index (mode L or 16-bit) or palette (mode P) image,
    whose palette indices are the classes, as in Pascal VOC.
    """
    img = _open(path, "mask")
    if img.mode in ("P", "L", "1", *_SIXTEEN_BIT):
        arr = np.asarray(img)
    elif img.mode in ("LA", "PA"):
        arr = np.asarray(img)[..., 0]
    else:
        raise DataError(
            f"mask {path} is a {img.mode} colour image, but masks hold one class index per pixel: save it "
            "as an index (mode L) or palette (mode P) PNG whose pixel values are the class numbers"
        )
    return torch.from_numpy(np.ascontiguousarray(arr).astype(np.int64))


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files directly inside a folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a directory")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


@contextmanager
def building_dataset_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` holding ``images/``, ``masks/`` and ``splits/``: when the
    block ends it gets the user's normal permissions and replaces ``out`` (absent or empty); when
    the block fails it is removed, so ``out`` never holds a partial dataset."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for sub in ("images", "masks", "splits"):
            (tmp / sub).mkdir()
        yield tmp
        _normal_permissions(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _normal_permissions(folder: Path) -> None:
    """mkdtemp makes a 0700 folder: give the tree the modes the user's umask asks for."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for p in folder.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)
