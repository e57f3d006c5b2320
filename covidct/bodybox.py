"""The body's bounding box in a CT slice, found from the pixels: the box a split file gives (xmin ymin xmax ymax),
for slices that come without one.

Every model is trained on slices cropped to that box and never sees a whole slice: scored uncropped (air around
the body, the CT table under it) a Normal slice can come out at P(COVID-19) = 0.99. So ``predict`` crops a new
slice the same way. The body is the largest bright region once thin bridges (a table touching the back, a cable)
are cut, with its holes (the dark lungs) filled; the table and air are outside it. The box is the outline's
bounding box, a few pixels wider, as COVIDx CT's boxes (and the sample's) sit a few pixels outside the skin.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MIN_BODY_FRACTION = 0.05  # a largest region smaller than this share of the slice is noise or a blank image, no body
PAD_FRACTION = 0.01  # margin around the outline, a share of the longer side: 5 px at 512, as the split files' 2-7


def otsu_threshold(image: np.ndarray) -> float:
    """The gray level in [0, 1] that best splits the pixels in two classes (Otsu): air and lungs below it, body
    tissue above. Found from the slice itself, so it follows whatever window the slice was exported with."""
    hist = np.bincount(np.clip(np.rint(image * 255), 0, 255).astype(np.int64).ravel(), minlength=256)
    weight = np.cumsum(hist) / hist.sum()
    mean = np.cumsum(hist * np.arange(256)) / hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean[-1] * weight - mean) ** 2 / (weight * (1 - weight))
    return float(np.nanargmax(between)) / 255


def body_mask(image: np.ndarray) -> np.ndarray | None:
    """bool (H, W): the largest bright region, bridges cut and holes filled; None if no region is big enough."""
    if image.max() <= image.min():  # blank: there is no threshold to find
        return None
    smooth = ndimage.uniform_filter(image.astype(np.float32), 3)  # CT noise would speckle the mask
    bright = smooth > otsu_threshold(smooth)
    # Opening removes anything thinner than about 1/64 of the slice (8 px at 512): the table's rim, a bridge where
    # the table touches the back. The body is far thicker and keeps its outline.
    iterations = max(1, round(min(image.shape) / 128))
    bright = ndimage.binary_opening(bright, ndimage.generate_binary_structure(2, 1), iterations=iterations)
    filled = ndimage.binary_fill_holes(bright)
    labels, count = ndimage.label(filled)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    if sizes.max() < MIN_BODY_FRACTION * image.size:
        return None
    return labels == 1 + int(np.argmax(sizes))


def find_body_box(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """(xmin, ymin, xmax, ymax) of the body in a gray slice in [0, 1], as the split files write it (the outline's
    first and last pixel, each moved out by the margin; the crop takes ``image[ymin:ymax, xmin:xmax]``); None if no
    body is found."""
    mask = body_mask(image)
    if mask is None:
        return None
    h, w = image.shape
    pad = round(PAD_FRACTION * max(h, w))
    ys, xs = np.nonzero(mask)
    return (max(int(xs.min()) - pad, 0), max(int(ys.min()) - pad, 0),
            min(int(xs.max()) + pad, w), min(int(ys.max()) + pad, h))


def box_iou(a, b) -> float:
    """Intersection over union of two (xmin, ymin, xmax, ymax) boxes."""
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0
