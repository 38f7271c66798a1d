"""One image file into a uint8 array, and images brought to one size.

    decode_image(path)                         -> (H, W, C) uint8, C = 1 or 3
    fit_image(image, (H, W), crop, where)      -> (H, W, C) uint8
    fit_images(images, (H, W), crop, where)    -> (N, H, W, C) uint8
    parse_image_size("32x32")                  -> (32, 32)

Modes (Pillow's names) become:

- "L" (8-bit grayscale) stays one channel; "1" (black and white) becomes "L";
  "LA" and "La" drop their alpha and stay one channel;
- "RGB" stays three channels; "RGBA", "RGBa", "RGBX" drop alpha or padding;
  "P" (palette, GIF and some PNGs) and every other mode ("CMYK", "YCbCr",
  "LAB", "HSV", ...) are converted to RGB by Pillow;
- 16-bit grayscale ("I;16", "I;16B", ..., what Pillow makes of a 16-bit PNG)
  is scaled to 8 bits, v -> round(v / 257), so 0..65535 maps onto 0..255;
- "I" (32-bit integers) is taken as 16-bit data when its values are in
  0..65535 (scaled as above) and refused otherwise; "F" (32-bit float) is taken
  as 0..1 when its values are there (v -> round(255 v)) and refused otherwise:
  no single rule fits other ranges, and scaling each image by its own range
  would give the same pixel value different meanings in different images.

JPEG, WebP and PNG images are turned upright by their EXIF orientation, as
viewers show them. Animated GIF and WebP give their first frame.

Resizing stretches to exactly (H, W) with Pillow's Lanczos filter, which
low-passes before shrinking (no aliasing) and is sharp when enlarging; the
aspect ratio is not kept. Cropping keeps the centre (H, W) pixels (the extra
odd pixel goes to the bottom and right) and refuses an image smaller than that.
Failures are DataError, one line naming the file (or `where`).
"""
from __future__ import annotations

import errno
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps

from .dataset import DataError

__all__ = ["IMAGE_SUFFIXES", "decode_image", "fit_image", "fit_images", "parse_image_size"]

# What the folder loader takes for an image (compared in lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

_ONE_CHANNEL = {"L": "L", "1": "L", "LA": "L", "La": "L"}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_RESAMPLE = Image.Resampling.LANCZOS


def decode_image(path, shrink_to=None) -> np.ndarray:
    """The image in the file at `path` as a (H, W, C) uint8 array, C = 1 or 3.

    Parameters
    ----------
    path : str or os.PathLike
        The image file (any format Pillow reads; see the module docstring for modes).
    shrink_to : (H, W) or None
        A size the caller will resize to: a JPEG may then be decoded at a
        reduced scale (1/2, 1/4, 1/8) that is still at least that big in both
        directions, several times faster for big photos. None: full size.

    Raises
    ------
    DataError
        The file is missing, unreadable, not an image, truncated or corrupt, or
        of a mode with no sensible 8-bit form; one line naming `path`.
    """
    return _decode(path, str(path), shrink_to)


def decode_image_bytes(data, where="image") -> np.ndarray:
    """decode_image for an encoded image held in memory (bytes of a PNG, JPEG, ...);
    `where` names it in errors."""
    return _decode(io.BytesIO(bytes(data)), where, None)


def _decode(source, where, shrink_to):
    try:
        with (open(source, "rb") if not hasattr(source, "read") else source) as f:
            with warnings.catch_warnings():
                # a corrupt EXIF block or an oversized image warns; the checks below decide
                warnings.simplefilter("ignore")
                with Image.open(f) as img:
                    if shrink_to is not None and img.format == "JPEG":
                        side = max(int(s) for s in shrink_to)  # either way up, after EXIF
                        img.draft(img.mode, (side, side))
                    img.load()
                    img = ImageOps.exif_transpose(img) if _has_orientation(img) else img
                    return _to_uint8(img, where)
    except DataError:
        raise
    except PermissionError:
        raise DataError(f"{where}: permission denied (cannot read the image)") from None
    except FileNotFoundError:
        raise DataError(f"{where}: no such file (a broken symlink?)") from None
    except IsADirectoryError:
        raise DataError(f"{where}: is a folder, not an image") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{where}: refused: {e}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{where}: a symlink loop") from None
        raise _unreadable(where, e) from None
    except (SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        # Pillow's plugins raise these on malformed headers and frames
        raise _unreadable(where, e) from None


def _unreadable(where: str, error: BaseException) -> DataError:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    text = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", text)   # bytes held in memory
    return DataError(f"{where}: not a readable image, corrupt or truncated ({text[:200]})")


def _has_orientation(img) -> bool:
    """Whether the image carries an EXIF orientation other than "upright"."""
    if img.format not in ("JPEG", "WEBP", "PNG", "MPO"):
        return False
    try:
        return img.getexif().get(0x0112, 1) not in (1, None)
    except Exception:  # noqa: BLE001 - a malformed EXIF block: keep the pixels as stored
        return False


def _to_uint8(img, where: str) -> np.ndarray:
    """A loaded Pillow image -> (H, W, C) uint8 (see the module docstring)."""
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)[:, :, None].copy()
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)
    if mode in _ONE_CHANNEL:
        return np.asarray(img.convert("L"), dtype=np.uint8)[:, :, None].copy()
    if mode in _SIXTEEN_BIT or mode == "I":
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(
                f"{where}: 32-bit integer image with values {values.min()}..{values.max()} "
                "outside 0..65535: convert it to 8-bit grayscale or RGB"
            )
        return ((values * 2 + 257) // 514).astype(np.uint8)[:, :, None]  # round(v / 257)
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0
                                and values.max() <= 1):
            raise DataError(
                f"{where}: floating-point image with values outside 0..1: "
                "convert it to 8-bit grayscale or RGB"
            )
        return np.rint(values * 255).astype(np.uint8)[:, :, None]
    return np.array(img.convert("RGB"), dtype=np.uint8)


def parse_image_size(text) -> tuple[int, int]:
    """"HxW" (or "H,W", or one number N for NxN) -> (H, W), positive ints; ValueError if not."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+)\s*)?", str(text))
    if not match:
        raise ValueError(f"image size {text!r} is not HxW (for example 32x32)")
    height = int(match.group(1))
    width = int(match.group(2) or height)
    if height < 1 or width < 1:
        raise ValueError(f"image size {text!r} must be at least 1x1")
    return height, width


def _check_size(size) -> tuple[int, int]:
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"image size must be (H, W), got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"image size must be at least (1, 1), got {size!r}")
    return height, width


def fit_image(image: np.ndarray, size, crop: bool = False, where: str = "image") -> np.ndarray:
    """One (h, w, C) uint8 image brought to (H, W, C): resized, or center-cropped.

    Parameters
    ----------
    image : (h, w, C) uint8, C = 1 or 3
    size : (H, W)
    crop : bool
        False: resize (stretch) with the Lanczos filter. True: keep the centre
        (H, W) pixels; an image smaller than (H, W) in either direction is refused.
    where : str
        What to name in an error (the file).

    Returns
    -------
    (H, W, C) uint8; `image` itself when it is that size already.
    """
    height, width = _check_size(size)
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if crop:
        if h < height or w < width:
            raise DataError(
                f"{where} is {h}x{w}, smaller than the crop {height}x{width}: "
                "give a smaller --image-size, or leave out --crop to resize"
            )
        top, left = (h - height) // 2, (w - width) // 2
        return image[top:top + height, left:left + width]
    channels = image.shape[2]
    pil = Image.fromarray(image[:, :, 0] if channels == 1 else image)
    out = np.asarray(pil.resize((width, height), _RESAMPLE), dtype=np.uint8)
    return out[:, :, None] if channels == 1 else out


def fit_images(images: np.ndarray, size, crop: bool = False, where: str = "images") -> np.ndarray:
    """Every image of (N, h, w, C) uint8 `images` brought to (N, H, W, C), as `fit_image`.

    A crop is a copy of the centre of all images at once; a resize goes
    image by image. `where` (the source) is named in an error. Returns `images`
    itself when they are (H, W) already.
    """
    height, width = _check_size(size)
    n, h, w, channels = images.shape
    if (h, w) == (height, width):
        return images
    if crop:
        if h < height or w < width:
            raise DataError(
                f"{where}: the images are {h}x{w}, smaller than the crop {height}x{width}: "
                "give a smaller --image-size, or leave out --crop to resize"
            )
        top, left = (h - height) // 2, (w - width) // 2
        return np.ascontiguousarray(images[:, top:top + height, left:left + width])
    out = np.empty((n, height, width, channels), dtype=np.uint8)
    for i in range(n):
        out[i] = fit_image(images[i], (height, width), False, f"{where} image {i}")
    return out
