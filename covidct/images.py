"""Reading one CT slice from disk as 8-bit grayscale, the same way for training (crop) and scoring (predict)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


def to_gray8(image: Image.Image) -> Image.Image:
    """Any PNG/JPEG mode -> 8-bit grayscale; 16-bit data is scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
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


def read_image(path: Path) -> Image.Image:
    """The image as 8-bit grayscale, or ``Unusable`` saying why not (missing, empty, not an image, truncated)."""
    try:
        if path.stat().st_size == 0:
            raise Unusable("empty_file", "zero-byte file")
        with Image.open(path) as image:
            image.load()
            return to_gray8(image)
    except FileNotFoundError:
        raise Unusable("missing_file", "listed in the split file but not found") from None
    except UnidentifiedImageError:
        raise Unusable("not_an_image", "not a PNG/JPEG (PIL cannot identify it)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: "image file is truncated", broken chunks, CRC errors
        raise Unusable("corrupt_image", f"cannot decode: {exc}") from None
