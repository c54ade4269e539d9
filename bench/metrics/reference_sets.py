"""FID reference sets a user gives (``--fid-ref PATH``): a folder of images, an .npz / .npy of uint8 images, or
precomputed statistics (an .npz with ``mu`` and ``sigma``: NVlabs EDM's ``fid.py ref`` output, clean-fid's
statistics files), read with ``allow_pickle=False``, validated, and named by a hash of their content.

Images are streamed in batches (never all in memory at once for a folder); their content hash covers the shape and
every pixel in order, so the same images in a folder or an .npz get the same name. Statistics are mu (d,) and sigma
(d, d), finite; d says the feature extractor (64: the digits classifier, 2048: Inception pool3). A file that needs
pickle (.pkl, .pt, an .npz of Python objects) is refused: unpickling a file can run code.
"""
from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
IMAGE_KEYS = ("arr_0", "images", "x")  # where an .npz keeps its images (np.savez(path, images) saves arr_0)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt")
MIN_IMAGES = 4        # FID / KID on fewer is meaningless (KID subsets of at least 2)
MAX_IMAGE_SIDE = 4096  # per side: larger is a decompression bomb, not a reference image
READ_BATCH = 256
AUTO = "auto"
PICKLE_REFUSED = ("never loaded: unpickling a file can run code; save plain arrays instead, e.g. "
                  "np.savez(path, mu=mu, sigma=sigma) or np.savez(path, images=uint8_images)")


@dataclass(frozen=True)
class ReferenceSet:
    """A validated reference set: where it is, what it holds, its content hash and the extractor it is read with.

    ``kind`` is "images" (``shape`` = (C, H, W) of each) or "statistics" (``dim`` = feature dimension; ``n`` = the
    image count stored with them, 0 where the file does not say).
    """

    path: str
    kind: str
    digest: str
    n: int
    extractor: str
    shape: tuple = ()
    dim: int = 0

    @property
    def key(self) -> str:
        """The name rows and caches use: the content hash's first 16 hex digits, and the extractor where it is not
        the one the data's shape implies (the same images read by two extractors are two references)."""
        default = self.extractor if self.kind == "statistics" else extractor_for_shape(self.shape)
        return f"fidref-{self.digest[:16]}" + ("" if self.extractor == default else f"-{self.extractor}")


def _extractors():
    from .features import FID_EXTRACTOR, INCEPTION
    return FID_EXTRACTOR, INCEPTION


def extractor_for_shape(shape: tuple) -> str:
    """The default extractor of images of ``shape``: the digits classifier for 1x8x8, Inception for the rest."""
    digits, inception = _extractors()
    return digits if tuple(shape) == (1, 8, 8) else inception


def _choose(extractor: str, *, shape: tuple = (), dim: int = 0, path="") -> str:
    from .features import EXTRACTORS, extractor_dim

    digits, inception = _extractors()
    allowed = [AUTO, *EXTRACTORS]
    if extractor not in allowed:
        raise ValueError(f"--fid-extractor {extractor!r} is not a feature extractor; allowed: {allowed}")
    if dim:  # statistics: the dimension says which extractor made them
        by_dim = {d: name for name, d in EXTRACTORS.items()}
        if extractor == AUTO:
            if dim not in by_dim:
                raise ValueError(f"{path}: statistics of dimension {dim} match no feature extractor; allowed: "
                                 + ", ".join(f"{v} ({k})" for k, v in by_dim.items()))
            return by_dim[dim]
        if extractor_dim(extractor) != dim:
            raise ValueError(f"{path}: statistics of dimension {dim}, but {extractor} gives "
                             f"{extractor_dim(extractor)}-d features")
        return extractor
    if extractor == AUTO:
        return extractor_for_shape(shape)
    if extractor == digits and tuple(shape) != (1, 8, 8):
        raise ValueError(f"{path}: images of shape {tuple(shape)}; {digits} takes 1x8x8 grayscale only")
    return extractor


# -- reading ------------------------------------------------------------------------------------------------------
def _npz(path: Path):
    try:  # an .npy is memory-mapped: only the batch being read is in memory
        return np.load(path, allow_pickle=False, mmap_mode="r" if path.suffix.lower() == ".npy" else None)
    except ValueError as e:
        if "pickle" in str(e):
            raise ValueError(f"--fid-ref {path} holds pickled data, which is {PICKLE_REFUSED}") from None
        raise ValueError(f"--fid-ref {path}: not a NumPy .npz / .npy file ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"--fid-ref {path}: not a NumPy .npz / .npy file ({type(e).__name__}: {e})") from None


def _array(npz, key: str, path: Path) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as e:
        if "pickle" in str(e) or "Object arrays" in str(e):
            raise ValueError(f"--fid-ref {path}: entry {key!r} holds Python objects (pickle), which are "
                             f"{PICKLE_REFUSED}") from None
        raise ValueError(f"--fid-ref {path}: entry {key!r} cannot be read ({e})") from None


def _layout(images: np.ndarray, path: Path) -> str:
    """How uint8 images are laid out: "nhw", "nhwc" or "nchw" (C in (1, 3)); ValueError otherwise."""
    if images.dtype != np.uint8:
        raise ValueError(f"--fid-ref {path}: images are {images.dtype}; expected uint8 0..255 (convert with "
                         f"(x * 127.5 + 127.5).round().clip(0, 255).astype(np.uint8) for [-1, 1] data)")
    if images.ndim == 3:
        layout = "nhw"
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        layout = "nhwc"
    elif images.ndim == 4 and images.shape[1] in (1, 3):
        layout = "nchw"
    else:
        raise ValueError(f"--fid-ref {path}: images of shape {images.shape}; expected (N, H, W), (N, H, W, C) or "
                         f"(N, C, H, W) with C = 1 or 3")
    side = max(images.shape[1:3]) if layout != "nchw" else max(images.shape[2:])
    if side > MAX_IMAGE_SIDE:
        raise ValueError(f"--fid-ref {path}: images of {side} pixels per side exceed {MAX_IMAGE_SIDE}")
    return layout


def _nchw(batch: np.ndarray, layout: str) -> np.ndarray:
    """One batch as contiguous (B, C, H, W) (only the batch is read from a memory-mapped array)."""
    if layout == "nhw":
        batch = batch[:, None]
    elif layout == "nhwc":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch)


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                  key=lambda p: p.relative_to(folder).as_posix())


def _read_image(path: Path) -> np.ndarray:
    """One image file as uint8 (C, H, W): grayscale stays one channel, everything else becomes RGB."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if max(im.size) > MAX_IMAGE_SIDE:
                raise ValueError(f"--fid-ref {path}: {im.size[0]}x{im.size[1]} exceeds {MAX_IMAGE_SIDE} pixels "
                                 f"per side")
            im = im.convert("L") if im.mode in ("L", "1", "I", "I;16", "F", "LA") else im.convert("RGB")
            a = np.asarray(im, dtype=np.uint8)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 -- a file PIL cannot decode is the user's
        raise ValueError(f"--fid-ref {path}: not a readable image ({type(e).__name__}: {e})") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _iter_image_batches(path: Path, batch: int = READ_BATCH) -> Iterator[np.ndarray]:
    """uint8 (B, C, H, W) batches of the images at ``path`` (folder, .npz or .npy), in a fixed order."""
    if path.is_dir():
        files = _image_files(path)
        shape = None
        for lo in range(0, len(files), batch):
            images = []
            for f in files[lo:lo + batch]:
                a = _read_image(f)
                if shape is None:
                    shape, first = a.shape, f
                elif a.shape != shape:
                    raise ValueError(f"--fid-ref {path}: images differ in shape: {first.name} is {shape}, "
                                     f"{f.relative_to(path)} is {a.shape}; resize them to one shape")
                images.append(a)
            yield np.stack(images)
        return
    data = _npz(path)
    if isinstance(data, np.ndarray):
        images = data
    else:
        keys = [k for k in IMAGE_KEYS if k in data.files]
        images = _array(data, keys[0], path)
    layout = _layout(images, path)
    for lo in range(0, len(images), batch):
        yield _nchw(images[lo:lo + batch], layout)


def _digest_images(path: Path) -> tuple[str, int, tuple]:
    h, n, shape = None, 0, ()
    for b in _iter_image_batches(path):
        if h is None:
            shape = tuple(int(s) for s in b.shape[1:])
            h = hashlib.sha256(f"images:{shape}".encode())
        h.update(b.tobytes())
        n += len(b)
    return (h.hexdigest() if h else ""), n, shape


def _statistics(path: Path, data) -> tuple[np.ndarray, np.ndarray, int]:
    mu, sigma = _array(data, "mu", path), _array(data, "sigma", path)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"--fid-ref {path}: mu of shape {mu.shape} and sigma of shape {sigma.shape}; expected "
                         f"(d,) and (d, d)")
    if not (np.issubdtype(mu.dtype, np.floating) and np.issubdtype(sigma.dtype, np.floating)):
        raise ValueError(f"--fid-ref {path}: mu and sigma are {mu.dtype} / {sigma.dtype}; expected floats")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"--fid-ref {path}: mu or sigma has non-finite values")
    if not np.allclose(sigma, sigma.T, rtol=1e-5, atol=1e-8 * max(1.0, float(np.abs(sigma).max()))):
        raise ValueError(f"--fid-ref {path}: sigma is not symmetric; expected a covariance matrix")
    n = 0
    for key in ("n", "num_samples", "count"):
        if key in data.files:
            v = _array(data, key, path)
            if v.shape == () and np.issubdtype(v.dtype, np.integer) and int(v) >= 2:
                n = int(v)
    return mu, sigma, n


def _kind(path: Path) -> str:
    if not path.exists():
        raise ValueError(f"--fid-ref {path}: no such file or folder; expected a folder of images, an .npz of uint8 "
                         f"images or an .npz of statistics (mu, sigma)")
    if path.is_dir():
        return "images"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"--fid-ref {path}: a {path.suffix} file is a pickle, which is {PICKLE_REFUSED}")
    if path.suffix.lower() not in (".npz", ".npy"):
        raise ValueError(f"--fid-ref {path}: expected a folder of images, an .npz / .npy of uint8 images or an .npz "
                         f"of statistics (mu, sigma)")
    data = _npz(path)
    if isinstance(data, np.ndarray):
        return "images"
    if "mu" in data.files and "sigma" in data.files and not any(k in data.files for k in IMAGE_KEYS):
        return "statistics"
    if any(k in data.files for k in IMAGE_KEYS):
        return "images"
    raise ValueError(f"--fid-ref {path}: holds {sorted(data.files)[:8]}; expected images under one of "
                     f"{list(IMAGE_KEYS)} or statistics under 'mu' and 'sigma'")


def open_reference(path, extractor: str = AUTO) -> ReferenceSet:
    """Read and validate the reference set at ``path`` once (images streamed), and name it by its content hash."""
    path = Path(path).expanduser()
    kind = _kind(path)
    if kind == "statistics":
        mu, sigma, n = _statistics(path, _npz(path))
        h = hashlib.sha256(b"statistics:")
        h.update(mu.tobytes())
        h.update(sigma.tobytes())
        name = _choose(extractor, dim=len(mu), path=path)
        return ReferenceSet(str(path), kind, h.hexdigest(), n, name, dim=len(mu))
    digest, n, shape = _digest_images(path)
    if n < MIN_IMAGES:
        where = f"image files ({', '.join(IMAGE_SUFFIXES)})" if path.is_dir() else "images"
        raise ValueError(f"--fid-ref {path}: {n} {where}; FID needs at least {MIN_IMAGES}")
    return ReferenceSet(str(path), kind, digest, n, _choose(extractor, shape=shape, path=path), shape=shape)


def image_batches(ref: ReferenceSet, batch: int = READ_BATCH) -> Iterator[np.ndarray]:
    """The reference's images in uint8 batches; ValueError at the end if they are no longer the ones validated."""
    h = hashlib.sha256(f"images:{tuple(ref.shape)}".encode())
    for b in _iter_image_batches(Path(ref.path), batch):
        h.update(b.tobytes())
        yield b
    if h.hexdigest() != ref.digest:
        raise ValueError(f"--fid-ref {ref.path} changed since it was validated (content hash {ref.key}); rerun")


def statistics(ref: ReferenceSet) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a statistics reference, float64; ValueError if the file changed since it was validated."""
    path = Path(ref.path)
    mu, sigma, _ = _statistics(path, _npz(path))
    h = hashlib.sha256(b"statistics:")
    h.update(mu.tobytes())
    h.update(sigma.tobytes())
    if h.hexdigest() != ref.digest:
        raise ValueError(f"--fid-ref {ref.path} changed since it was validated (content hash {ref.key}); rerun")
    return mu, sigma


def check_checkpoint(ref: ReferenceSet, ck) -> None:
    """ValueError unless the checkpoint's samples can be compared with ``ref`` (images of its shape, its extractor)."""
    shape = tuple(ck.data_shape)
    if not (len(shape) == 3 and shape[0] in (1, 3)):
        raise ValueError(f"--fid-ref: checkpoint {ck.name!r} has data of shape {shape}, not images (C, H, W) with "
                         f"C = 1 or 3; FID needs images")
    digits, _ = _extractors()
    if ref.kind == "images" and tuple(ref.shape) != shape:
        raise ValueError(f"--fid-ref {ref.path}: images of shape {tuple(ref.shape)}, but checkpoint {ck.name!r} "
                         f"samples {shape}; give reference images of the checkpoint's shape")
    if ref.extractor == digits and shape != (1, 8, 8):
        raise ValueError(f"--fid-ref {ref.path}: read with {digits}, which takes 1x8x8 grayscale only; checkpoint "
                         f"{ck.name!r} samples {shape}")
