"""The image folder: which files are images, their labels, and how each is decoded.

Two layouts are understood:

* **labeled** -- the root holds one sub-folder per class (torchvision's ``ImageFolder``);
  files in nested folders belong to their top-level class folder; class order is the
  sorted folder names.  Empty class folders still count as classes, so that output ``i``
  of a model keeps meaning the ``i``-th class folder.
* **flat** -- the root holds images and no sub-folder: the images are unlabeled.

Files whose extension is not an image format are passed over silently, as are hidden
files and folders.  Anything that looks like an image but cannot be decoded becomes a
:class:`Skipped` entry with a readable reason; the run goes on.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import multiprocessing
import os
import signal
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from reportgen.errors import UserError
from reportgen.image_stats import PROPERTIES, SourceFacts, image_stats

if TYPE_CHECKING:
    from reportgen.models import ModelInfo

Image.init()

# Raster formats found in image datasets.  Formats that need external programs (EPS) or
# are containers of other data (HDF5, GRIB, MPEG) are left out on purpose.
_WANTED_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".apng",
    ".gif",
    ".bmp",
    ".dib",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".tga",
    ".ico",
    ".jp2",
    ".j2k",
    ".jpx",
    ".avif",
    ".qoi",
    ".psd",
    ".pcx",
    ".sgi",
    ".rgb",
    ".dds",
    ".icns",
}
IMAGE_EXTENSIONS = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if ext in _WANTED_EXTENSIONS and fmt in Image.OPEN
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Image files larger than this are skipped unless ``--max-image-mb`` raises it: the file
# is hashed and decoded from disk (never read whole into memory), but hashing a 64 GB
# sparse file that claims to be a PNG would still take a minute for nothing.
MAX_IMAGE_BYTES = 512 << 20


# The largest input side a model file (its input shape or its metadata hint) or an audit
# JSON may ask for without --size: a batch of 8192 x 8192 inputs is 25 GB, asked for by a
# few bytes of an untrusted file.
UNTOLD_SIDE = 2048


def too_large(size: int, max_bytes: int) -> str:
    """The Skipped reason of a file over the cap."""
    return (
        f"file too large: {size / (1 << 20):,.0f} MB, over the {max_bytes / (1 << 20):,.0f} MB "
        "reportgen reads per image (--max-image-mb raises it)"
    )


@dataclass(frozen=True)
class Skipped:
    """A file that was expected to be an image but could not be used."""

    file: str  # path relative to the image root, POSIX separators
    reason: str  # one readable line


@dataclass(frozen=True)
class ImageRecord:
    """One image file found on disk (not yet decoded)."""

    file: str  # path relative to the image root, POSIX separators
    folder_class: int  # index into ImageDataset.folder_classes, -1 when unlabeled
    size: int  # bytes
    mtime_ns: int


@dataclass
class ImageDataset:
    """The result of :func:`discover`: candidate images, folder classes, early skips."""

    root: Path
    labeled: bool
    folder_classes: list[str]
    records: list[ImageRecord]
    skipped: list[Skipped] = field(default_factory=list)
    links_not_followed: int = 0  # links out of the folder, listed in ``skipped``
    max_bytes: int = MAX_IMAGE_BYTES  # files larger than this are skipped (``--max-image-mb``)
    # From a manifest or ``--labels-file`` (see ``reportgen.manifest``); a folder has none.
    source: Path | None = None  # the file that lists the images and their labels
    source_sha256: str | None = None
    label_indices: bool = False  # ``folder_classes`` are model output indices, not names
    metadata_columns: list[str] = field(default_factory=list)
    metadata: dict[str, tuple[object, ...]] = field(default_factory=dict)  # file -> one value per column
    # Several labels per image (see ``manifest._label_set``): ``folder_classes`` is the label
    # vocabulary, every record's ``folder_class`` is -1, and ``label_sets`` holds each
    # file's labels as indices into it (a file absent: its labels are not known).
    multi_label: bool = False
    label_sets: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def path(self, record: ImageRecord | str) -> Path:
        rel = record.file if isinstance(record, ImageRecord) else record
        return self.root / rel

    def listing_key(self) -> list[tuple[str, int, int]]:
        """(file, size, mtime) of every candidate: a cheap fingerprint for the cache."""
        return [(r.file, r.size, r.mtime_ns) for r in self.records]

    def labels_key(self) -> list[object]:
        """What decides each image's label: the class folders, or the listing file's
        digest (its labels are cached with the features)."""
        return [
            self.folder_classes,
            self.source_sha256,
            self.label_indices,
            *(["multi-label"] if self.multi_label else []),
        ]


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def is_plain_relative(file: object) -> bool:
    """Whether ``file`` is a relative POSIX path with no ``..``: the form of every image
    entry an audit writes."""
    if not isinstance(file, str) or not file or "\x00" in file:
        return False
    path = PurePosixPath(file)
    return not path.is_absolute() and ".." not in path.parts and not PureWindowsPath(file).drive


def contained(root: Path, file: str) -> Path | None:
    """``root / file`` when it is a plain relative path and, links resolved, stays inside
    ``root``; None otherwise."""
    if not is_plain_relative(file):
        return None
    path = root / file
    return path if _inside(os.path.realpath(root), os.path.realpath(path)) else None


def _inside(real_root: str, real_path: str) -> bool:
    """Whether ``real_path`` is ``real_root`` or below it (both with links resolved)."""
    try:
        return os.path.commonpath([real_root, real_path]) == real_root
    except ValueError:  # different drives
        return False


class _Links:
    """Where symbolic links may lead: inside the image folder, or (``follow``) anywhere.

    A link inside the image folder to a place outside it would put files the user did not
    point at into the report; by default such a link is listed under Skipped instead.
    """

    def __init__(self, root: Path, follow: bool):
        self.root = root
        self.real_root = os.path.realpath(root)
        self.follow = follow
        self.refusals = 0

    def refused(self, path: Path) -> Skipped | None:
        """A Skipped entry when ``path`` is a link out of the image folder that is not
        to be followed, else None."""
        if self.follow or not os.path.islink(path):
            return None
        target = os.path.realpath(path)
        if _inside(self.real_root, target):
            return None
        self.refusals += 1
        rel = path.relative_to(self.root).as_posix()
        return Skipped(rel, f"symbolic link out of the image folder (to {target}); not followed without --follow-links")


def _walk_files(top: Path, links: _Links) -> Iterator[Path | Skipped]:
    """Every non-hidden file below ``top`` in sorted order, following folder links once;
    folders that cannot be read and links that may not be followed come as Skipped."""
    seen: set[str] = set()
    stack = [top]
    while stack:
        folder = stack.pop()
        refused = links.refused(folder) or _loop(folder, links.root)
        if refused is not None:
            yield refused
            continue
        try:
            real = os.path.realpath(folder)
            if real in seen:
                continue
            seen.add(real)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            rel = folder.relative_to(links.root).as_posix()
            yield Skipped(f"{rel}/", f"cannot read folder: {exc.strerror or exc}; its images are not in the audit")
            continue
        subdirs = []
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(Path(entry.path))
            else:
                yield Path(entry.path)
        stack.extend(reversed(subdirs))


def _loop(folder: Path, root: Path) -> Skipped | None:
    """A Skipped entry when ``folder`` is a link to a folder that holds the link itself
    (``up -> ..``): following it would audit its ancestors' images again, under this
    class, and never end but for the walk's memory of folders seen."""
    if not os.path.islink(folder):
        return None
    target = os.path.realpath(folder)
    if not _inside(target, os.path.realpath(folder.parent)):
        return None
    rel = folder.relative_to(root).as_posix()
    return Skipped(rel, f"symbolic link to a folder that contains it (to {target}); not followed")


def _record(root: Path, path: Path, folder_class: int, max_bytes: int) -> ImageRecord | Skipped:
    rel = path.relative_to(root).as_posix()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            return Skipped(rel, "broken symbolic link (its target does not exist)")
        return Skipped(rel, "file disappeared while the folder was being read")
    except OSError as exc:
        return Skipped(rel, f"cannot read file: {exc.strerror or exc}")
    if not stat.S_ISREG(st.st_mode):
        return Skipped(rel, "not a regular file")
    if st.st_size > max_bytes:
        return Skipped(rel, too_large(st.st_size, max_bytes))
    return ImageRecord(rel, folder_class, st.st_size, st.st_mtime_ns)


def discover(
    root: str | os.PathLike[str], *, follow_links: bool = False, max_bytes: int = MAX_IMAGE_BYTES
) -> ImageDataset:
    """Find the images under ``root`` and their classes.

    Parameters
    ----------
    root
        A folder with one sub-folder per class, or a flat folder of unlabeled images.
    follow_links
        Follow symbolic links that lead out of ``root``; by default they are listed
        under Skipped (links that stay inside are always followed).
    max_bytes
        Files larger than this are listed under Skipped, unread.

    Raises
    ------
    UserError
        When ``root`` is not a folder or holds no image at all.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"image folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"not a folder: {root}")
    try:
        top = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise UserError(f"cannot read image folder {root}: {exc.strerror or exc}") from None
    class_dirs = [e for e in top if not _is_hidden(e.name) and _safe_is_dir(e)]
    labeled = bool(class_dirs)
    records: list[ImageRecord] = []
    skipped: list[Skipped] = []

    links = _Links(root, follow_links)

    def add(path: Path, folder_class: int) -> None:
        item = links.refused(path) or _record(root, path, folder_class, max_bytes)
        (records if isinstance(item, ImageRecord) else skipped).append(item)  # type: ignore[arg-type]

    if labeled:
        classes = [e.name for e in class_dirs]
        for e in top:
            if not _is_hidden(e.name) and not _safe_is_dir(e) and _is_image_name(e.name):
                skipped.append(Skipped(e.name, "image outside any class folder"))
        for index, entry in enumerate(class_dirs):
            for path in _walk_files(Path(entry.path), links):
                if isinstance(path, Skipped):
                    skipped.append(path)
                elif _is_image_name(path.name):
                    add(path, index)
    else:
        classes = []
        for e in top:
            if not _is_hidden(e.name) and _is_image_name(e.name):
                add(Path(e.path), -1)
    if not records and links.refusals:
        raise UserError(
            f"no usable image under {root}: {links.refusals} symbolic link(s) lead out of the folder "
            "and are not followed (--follow-links follows them)"
        )
    if not records and not skipped:
        raise UserError(f"no image files found under {root}")
    return ImageDataset(root, labeled, classes, records, skipped, links.refusals, max_bytes)


def _safe_is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


# ---------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Preprocess:
    """How a decoded image becomes the model's input tensor.

    ``resize='stretch'`` scales the whole image to ``size`` (nothing is cut off, which is
    what an audit wants to see); ``'crop'`` scales the shorter side to ``size / 0.875``
    and cuts the centre, as torchvision's ImageNet evaluation transform does.
    """

    size: tuple[int, int]  # (height, width)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3
    resize: str = "stretch"
    channels_last: bool = False

    def fingerprint(self) -> dict[str, object]:
        return {
            "size": list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
            "channels": self.channels,
            "resize": self.resize,
            "channels_last": self.channels_last,
        }

    @classmethod
    def from_fingerprint(cls, p: dict[str, Any]) -> Preprocess:
        """The preprocessing a ``fingerprint`` (from a cache or a report's JSON) describes."""
        return cls(
            size=tuple(p["size"]),
            mean=tuple(p["mean"]),
            std=tuple(p["std"]),
            channels=p["channels"],
            resize=p["resize"],
            channels_last=p["channels_last"],
        )


class DecodeError(Exception):
    """An image file that cannot be used; the message is the reason shown to the user."""


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer or float grayscale to 8 bits, scaling rather than clipping."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        arr8 = arr.astype(np.float32) / 257.0
    elif img.mode == "I":
        top = float(arr.max()) if arr.size else 0.0
        if top <= 255:
            arr8 = arr.astype(np.float32)
        elif top <= 65535:
            arr8 = arr.astype(np.float32) / 257.0
        else:
            arr8 = arr.astype(np.float32) * (255.0 / top)
    else:  # "F"
        arr = np.nan_to_num(arr.astype(np.float32))
        top = float(arr.max()) if arr.size else 0.0
        arr8 = arr * 255.0 if top <= 1.0 else np.clip(arr, 0, 255)
    return Image.fromarray(np.clip(np.rint(arr8), 0, 255).astype(np.uint8), "L")


def to_display_mode(img: Image.Image, channels: int = 3) -> Image.Image:
    """Convert any Pillow mode to RGB (or L for one channel) the way a viewer shows it.

    Transparency is composited over white; 16-bit images are scaled, not clipped; CMYK
    and palette images go through Pillow's own conversions.
    """
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit_gray(img)
    if img.mode == "1":
        img = img.convert("L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    return img


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not a recognised image format (the content is not an image)"
    if isinstance(exc, Image.DecompressionBombError):
        return "image too large: its pixel count exceeds Pillow's decompression-bomb limit"
    if "truncated" in text.lower():
        return "truncated image data (the file ends early)"
    if isinstance(exc, MemoryError):
        return "image too large to decode in memory"
    if len(text) > 160:
        text = text[:157] + "..."
    return f"corrupt image data: {text or type(exc).__name__}"


def open_image(
    path: Path, channels: int = 3, draft: tuple[int, int] | None = None, max_bytes: int = MAX_IMAGE_BYTES
) -> tuple[Image.Image, str]:
    """Read, hash and decode one image file (see :func:`open_image_facts`)."""
    img, digest, _ = open_image_facts(path, channels, draft, max_bytes)
    return img, digest


def open_image_facts(
    path: Path, channels: int = 3, draft: tuple[int, int] | None = None, max_bytes: int = MAX_IMAGE_BYTES
) -> tuple[Image.Image, str, SourceFacts]:
    """Read, hash and decode one image file.

    Returns the image in RGB (or L) with EXIF orientation applied, and the SHA-256 of the
    file's bytes.  ``draft`` lets JPEG decode at a reduced scale no smaller than it.  Only
    a regular file of at most ``max_bytes`` is read (a device, a FIFO or a huge file is
    refused before a byte is read); it is hashed in blocks and decoded from the file.

    Raises
    ------
    DecodeError
        With a readable reason, for any file that cannot be used.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise DecodeError("file disappeared before it could be read") from None
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise DecodeError("not a regular file")
        if st.st_size > max_bytes:
            raise DecodeError(too_large(st.st_size, max_bytes))
        if st.st_size == 0:
            raise DecodeError("empty file (0 bytes)")
        try:
            digest = hashlib.sha256()
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
            fh.seek(0)
        except OSError as exc:
            raise DecodeError(f"cannot read file: {exc.strerror or exc}") from None
        img, facts = _decode(fh, channels, draft)
    return img, digest.hexdigest(), facts


# EXIF orientations that turn the picture a quarter: its shown width is the stored height.
_QUARTER_TURNS = {5, 6, 7, 8}


def _decode(fh: IO[bytes], channels: int, draft: tuple[int, int] | None) -> tuple[Image.Image, SourceFacts]:
    try:
        img = Image.open(fh)
        exif = img.getexif() if "exif" in img.info or img.format in ("JPEG", "TIFF", "MPO") else None
        turned = bool(exif) and exif.get(0x0112) in _QUARTER_TURNS
        facts = SourceFacts(img.height if turned else img.width, img.width if turned else img.height, bool(exif))
        pixels = img.width * img.height
        limit = Image.MAX_IMAGE_PIXELS
        if limit and pixels > limit:
            raise DecodeError(
                f"image too large: {img.width}x{img.height} pixels exceeds Pillow's decompression-bomb limit of {limit}"
            )
        if draft is not None and img.format == "JPEG":
            # Rotation may swap the sides, so ask for the larger side in both.
            side = max(draft)
            img.draft(img.mode if img.mode in ("RGB", "L") else None, (side, side))
        img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img)
        img = to_display_mode(img, channels)
    except DecodeError:
        raise
    except (OSError, ValueError, SyntaxError, MemoryError, Image.DecompressionBombError, EOFError) as exc:
        raise DecodeError(_reason(exc)) from None
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise assorted errors on hostile input
        raise DecodeError(_reason(exc)) from None
    if img.width < 1 or img.height < 1:
        raise DecodeError("image has no pixels")
    return img, facts


# ``--resize crop`` keeps this share of the shorter side: ImageNet's evaluation crop
# (the shorter side scaled to 256 for a 224 input, then the centre cut out).
CROP_FRACTION = 0.875


def crop_geometry(width: int, height: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """For ``--resize crop``: the (width, height) an image of ``width`` x ``height`` is scaled
    to, and the (left, top) of the centre cut of ``size`` (height, width) from it.  The
    one definition the model's input and the overlays' placement both use."""
    in_h, in_w = size
    scale = max(in_h, in_w) / CROP_FRACTION / min(width, height)
    new_w, new_h = max(in_w, round(width * scale)), max(in_h, round(height * scale))
    return new_w, new_h, (new_w - in_w) // 2, (new_h - in_h) // 2


def resize_for_model(img: Image.Image, pre: Preprocess) -> Image.Image:
    """Scale (and for ``crop``, centre-cut) an image to the model's input size."""
    height, width = pre.size
    if pre.resize == "crop":
        new_w, new_h, left, top = crop_geometry(img.width, img.height, pre.size)
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return img.crop((left, top, left + width, top + height))
    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)


@functools.lru_cache(maxsize=8)
def _normalise_lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(C, 256) float32: the normalised value of every 8-bit level, per channel."""
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    m = np.asarray(mean, np.float32)[:, None]
    s = np.asarray(std, np.float32)[:, None]
    return ((levels[None, :] - m) / s).astype(np.float32)


def to_tensor(img: Image.Image, pre: Preprocess, out: np.ndarray | None = None) -> np.ndarray:
    """Normalised float32 array, CHW (or HWC when the model is channels-last).

    A lookup table per channel maps 8-bit levels straight to normalised values: one
    pass over the pixels instead of four (measured: 0.4 ms instead of 1.1 ms at 224 px).
    """
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    lut = _normalise_lut(tuple(pre.mean), tuple(pre.std))
    h, w, c = arr.shape
    if out is None:
        out = np.empty((h, w, c) if pre.channels_last else (c, h, w), np.float32)
    for ch in range(c):
        if pre.channels_last:
            out[:, :, ch] = lut[ch][arr[:, :, ch]]
        else:
            np.take(lut[ch], arr[:, :, ch], out=out[ch])
    return out


@dataclass
class Batch:
    """Decoded images ready for the model, with the failures met on the way."""

    indices: list[int]  # positions in ImageDataset.records of the decoded images
    pixels: np.ndarray  # (n, C, H, W) float32, or (n, H, W, C) when channels-last
    sha256: list[str]
    failures: list[tuple[int, str]]  # (position in records, reason)
    stats: np.ndarray  # (n, len(image_stats.PROPERTIES)) float32: each picture's properties


def load_one(path: Path, pre: Preprocess, max_bytes: int = MAX_IMAGE_BYTES) -> tuple[np.ndarray, str]:
    """Decode, resize and normalise one image."""
    img, digest = open_image(path, pre.channels, draft=pre.size, max_bytes=max_bytes)
    return to_tensor(resize_for_model(img, pre), pre), digest


def _load_batch(root: Path, files: list[tuple[int, str]], pre: Preprocess, max_bytes: int) -> Batch:
    """Decode ``files`` ((position in records, relative path) pairs); a worker's share."""
    shape = (*pre.size, pre.channels) if pre.channels_last else (pre.channels, *pre.size)
    pixels = np.empty((len(files), *shape), np.float32)
    stats = np.empty((len(files), len(PROPERTIES)), np.float32)
    ok: list[int] = []
    digests: list[str] = []
    failures: list[tuple[int, str]] = []
    for i, file in files:
        try:
            img, digest, facts = open_image_facts(root / file, pre.channels, draft=pre.size, max_bytes=max_bytes)
            shown = resize_for_model(img, pre)
            to_tensor(shown, pre, out=pixels[len(ok)])
        except DecodeError as exc:
            failures.append((i, str(exc)))
            continue
        stats[len(ok)] = image_stats(np.asarray(shown), facts)
        ok.append(i)
        digests.append(digest)
    return Batch(ok, pixels[: len(ok)], digests, failures, stats[: len(ok)])


def iter_batches(
    dataset: ImageDataset,
    pre: Preprocess,
    batch_size: int,
    workers: int | None = None,
    indices: Iterable[int] | None = None,
    prefetch: int = 2,
    processes: bool = False,
    pool: Executor | None = None,
) -> Iterator[Batch]:
    """Decode the dataset in order, in batches, each split over a pool of workers.

    With ``prefetch`` > 0, up to that many batches are decoded ahead while the caller
    works (right when the model runs elsewhere, e.g. on a GPU); with 0, a batch is decoded
    only when asked for, so decoding never competes with a model running on the same
    CPU cores (measured on 2 cores: overlap cost the torch runtime 15% of its speed,
    while decoding a batch on both cores between forward passes costs about 5%).
    Memory stays bounded by the batches in flight, whatever the number of images.

    The workers are threads, or with ``processes`` worker processes: decoding a small
    image is mostly Pillow's Python (file parsing, plugin checks) under the GIL, so
    threads decode such images no faster than one core (see :data:`PROCESS_DECODE_MIN`).
    A ``pool`` of the caller's (:func:`decode_pool`, ``workers`` wide) is used instead of
    one of its own and left open, for a caller that decodes many sets (a Ray worker's shards).
    """
    order = list(range(len(dataset.records))) if indices is None else list(indices)
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    records = dataset.records
    with decode_pool(workers, processes) if pool is None else contextlib.nullcontext(pool) as pool:
        pending: list[list[Future[Batch]]] = []
        next_chunk = 0

        def submit() -> None:
            nonlocal next_chunk
            chunk = chunks[next_chunk]
            next_chunk += 1
            step = max(1, -(-len(chunk) // workers))
            parts = [[(i, records[i].file) for i in chunk[j : j + step]] for j in range(0, len(chunk), step)]
            pending.append([pool.submit(_load_batch, dataset.root, part, pre, dataset.max_bytes) for part in parts])

        while next_chunk < len(chunks) and len(pending) < max(1, prefetch):
            submit()
        while pending:
            parts = [f.result() for f in pending.pop(0)]
            if prefetch > 0 and next_chunk < len(chunks):
                submit()  # decoded while the caller works on this batch
            yield _merge(parts, pre)
            if prefetch == 0 and next_chunk < len(chunks):
                submit()  # decoded only now, on all workers, while the caller waits


# Images from which extraction decodes in worker processes rather than threads (starting
# them costs a fraction of a second).  Decoding 50,000 PNGs of 32 x 32 on 2 cores took
# 10.6 s on two threads, 6.2 s on one (the GIL, handed back and forth), 4.3 s on two
# processes; JPEGs decode mostly outside the GIL, so threads lose less there.
PROCESS_DECODE_MIN = 5_000


def _ignore_interrupt() -> None:
    # Ctrl-C reaches the whole process group: the main process stops the run and says
    # so; a worker printing its own KeyboardInterrupt traceback would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def decode_pool(workers: int, processes: bool) -> Executor:
    """``workers`` decoding threads, or processes (see :func:`iter_batches`)."""
    if not processes:
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    # forkserver, not fork: the caller's runtime threads (onnxruntime, torch) may hold
    # locks at the moment of a fork; the server is a fresh interpreter with this module
    # loaded.  Windows has no forkserver: spawn, the same fresh interpreter per worker.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
    else:
        context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_ignore_interrupt)


def _merge(parts: list[Batch], pre: Preprocess) -> Batch:
    if len(parts) == 1:
        return parts[0]
    return Batch(
        [i for p in parts for i in p.indices],
        np.concatenate([p.pixels for p in parts]),
        [d for p in parts for d in p.sha256],
        [f for p in parts for f in p.failures],
        np.concatenate([p.stats for p in parts]),
    )


def input_size(info: ModelInfo, asked: tuple[int, int] | None) -> tuple[int, int]:
    """The input size: ``--size`` (``asked``), else the model's fixed size or hint; one
    the model file asks for beyond :data:`UNTOLD_SIDE` must be confirmed with ``--size``."""
    size = asked or info.input_size_hint or info.embedded.input_size
    if size is None:
        raise UserError("the model does not fix its input size; pass --size (e.g. --size 224)")
    if not asked and max(size) > UNTOLD_SIDE:
        h, w = size
        raise UserError(
            f"the model file asks for {h}x{w} inputs, more than reportgen takes from a file without being told "
            f"(sides up to {UNTOLD_SIDE}); pass --size {h}x{w} to confirm"
        )
    return (int(size[0]), int(size[1]))


def resolve_preprocess(
    info: ModelInfo,
    *,
    size: tuple[int, int] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    resize: str | None = None,
) -> Preprocess:
    """Input size, mean, std and resizing: the command line's (the arguments) first, then
    the model's (its embedded hints, then the hub files beside it), then defaults."""
    asked = size
    size = input_size(info, asked)
    if info.static_size and info.input_size_hint and asked and tuple(asked) != tuple(info.input_size_hint):
        h, w = info.input_size_hint
        raise UserError(f"the model only accepts {h}x{w} inputs, but --size asks for {asked[0]}x{asked[1]}")
    channels = info.channels
    if channels not in (1, 3):
        raise UserError(f"the model expects {channels} input channels; reportgen feeds RGB (3) or grayscale (1) images")
    default_mean = IMAGENET_MEAN if channels == 3 else (float(np.mean(IMAGENET_MEAN)),)
    default_std = IMAGENET_STD if channels == 3 else (float(np.mean(IMAGENET_STD)),)
    mean = mean or info.embedded.mean or default_mean
    std = std or info.embedded.std or default_std
    if len(mean) == 1:
        mean = mean * channels
    if len(std) == 1:
        std = std * channels
    if len(mean) != channels or len(std) != channels:
        raise UserError(f"--mean and --std need 1 or {channels} values for a {channels}-channel model")
    return Preprocess(
        size=(int(size[0]), int(size[1])),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        channels=channels,
        resize=resize or info.resize_hint or "stretch",
        channels_last=info.channels_last,
    )
