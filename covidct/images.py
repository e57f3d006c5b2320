"""Reading one CT slice from disk as 8-bit grayscale, the same way for training (crop) and scoring (predict)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


def to_gray8(image: Image.Image) -> Image.Image:
    """Any PNG/JPEG mode -> 8-bit grayscale; 16-bit data is scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L"):
        # round(v / 65535 * 255) = round(v / 257), exactly, in 4 bytes a pixel (float64 needed ~50 at its peak)
        array = np.asarray(image).astype(np.uint32)
        array += 128
        array //= 257
        return Image.fromarray(array.astype(np.uint8))
    if image.mode == "I":
        array = np.asarray(image, dtype=np.float64)
        top = max(float(array.max()), 1.0)
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("L")


class Unusable(Exception):
    """One slice cannot be used; ``reason`` is a short category for the data-quality report."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


# Peak bytes a pixel that read_image needs, by the mode the header declares: the decoded pixels (Pillow keeps
# 1, L, P in 1 byte, I;16 in 2, every other mode in 4) plus to_gray8's working copies, plus the caller's crop.
_BYTES_PER_PIXEL = {"1": 3, "L": 3, "P": 3, "I;16": 13, "I;16B": 13, "I;16L": 13, "I": 42,
                    "LA": 18, "PA": 18, "RGBA": 18}
_BYTES_PER_PIXEL_OTHER = 6  # RGB, CMYK, YCbCr, F: 4 bytes decoded + 1 converted + 1 cropped
_BYTES_PER_PIXEL_TRANSPARENT_P = 18  # P with a transparency colour goes through RGBA


def decode_bytes(image: Image.Image) -> int:
    """The memory ``read_image`` (plus a crop) needs for an opened, not yet decoded image: from its header alone."""
    if image.mode == "P" and "transparency" in image.info:
        per_pixel = _BYTES_PER_PIXEL_TRANSPARENT_P
    else:
        per_pixel = _BYTES_PER_PIXEL.get(image.mode, _BYTES_PER_PIXEL_OTHER)
    return image.width * image.height * per_pixel


def read_image(path: Path, max_bytes: int | None = None) -> Image.Image:
    """The image as 8-bit grayscale, or ``Unusable`` saying why not (missing, empty, not an image, truncated, or
    with ``max_bytes``: needing more memory than that to decode, judged from its header before decoding)."""
    try:
        if path.stat().st_size == 0:
            raise Unusable("empty_file", "zero-byte file")
        with Image.open(path) as image:
            need = decode_bytes(image)
            if max_bytes is not None and need > max_bytes:
                raise Unusable("too_large", f"{image.width}x{image.height} {image.mode} image needs ~{need / 2**20:,.0f}"
                               f" MiB to decode, more than the {max_bytes / 2**20:,.0f} MiB allowed per image")
            image.load()
            return to_gray8(image)
    except FileNotFoundError:
        raise Unusable("missing_file", "listed in the split file but not found") from None
    except UnidentifiedImageError:
        raise Unusable("not_an_image", "not a PNG/JPEG (PIL cannot identify it)") from None
    except Image.DecompressionBombError as exc:  # over twice Pillow's pixel limit: refused before decoding
        raise Unusable("too_large", str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: "image file is truncated", broken chunks, CRC errors
        raise Unusable("corrupt_image", f"cannot decode: {exc}") from None
