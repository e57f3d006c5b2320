"""Synthetic chest-CT phantoms written exactly in the COVIDx CT layout.

The sample exists so the whole pipeline runs offline, and so that a model has to *learn* something:
COVID-19 slices carry bilateral, peripheral ground-glass patches, pneumonia slices a dense
consolidation, normal slices neither. Every slice has vessels, ribs, a spine, a CT table outside the
body (so cropping to the bounding box matters), a random position, size, gain and noise. The intensity
a lesion adds is taken back out of the whole body, so the class mean intensities agree: no shortcut
through global brightness.

Like COVIDx CT, the sample pools several sources ("sites"), each with its own scanner look: gain, offset, noise
and sharpness (``SITES``). By default every site holds both classes, so a site says nothing about the label; with
``confounded=True`` the last site holds every COVID-19 patient and only those, and looks distinctly different:
the single-class-source trap of pooled datasets, which the confounding check must catch.

Layout written under ``root`` (the same as the Kaggle download):
    3A_images/phantom_<patient>_<scan>_<slice>.png    512x512 8-bit grayscale (the name does not tell the site)
    masks/<same name>.png                              lesion mask (0/255), for CAM tests
    {train,val,test}_COVIDx_CT-3A.txt                  ``fname cls xmin ymin xmax ymax``
    metadata.csv                                       ``patient id,source,finding``, as COVIDx CT's releases
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from covidct.atomic import atomic_write_text
from covidct.layout import IMAGES_DIR, SPLITS, patient_id, split_filename
from covidct.params import Problems, integer, is_number, is_positive_int, seed_int, unknown_keys

NORMAL, PNEUMONIA, COVID = 0, 1, 2
CLASS_NAMES = {NORMAL: "Normal", PNEUMONIA: "Pneumonia", COVID: "COVID-19"}
SOURCE = "phantom"  # every file name's first field; the site is in metadata.csv only

# A site's scanner: multiplies the gray levels, adds to them, adds noise (sd) and blurs (sd in px at 512).
# site_a is the look the sample had before it had sites.
SITES = {
    "site_a": {"gain": 1.0, "offset": 0.0, "noise": 6.0, "blur": 0.8},
    "site_b": {"gain": 0.9, "offset": 10.0, "noise": 9.0, "blur": 0.6},
    "site_c": {"gain": 1.1, "offset": -8.0, "noise": 4.0, "blur": 1.1},
    "site_d": {"gain": 0.95, "offset": 5.0, "noise": 7.5, "blur": 1.4},
}
# The confounded variant's last site: far brighter, sharper and noisier than any other, so a network tells it apart
# at a glance (as a scanner, a reconstruction kernel or burned-in text would).
CONFOUNDED_LOOK = {"gain": 1.25, "offset": 30.0, "noise": 12.0, "blur": 0.3}

# Gray levels of the tissues, roughly a lung window mapped to 8 bits.
AIR, LUNG, FAT, MUSCLE, HEART, BONE, TABLE = 4.0, 30.0, 95.0, 128.0, 140.0, 225.0, 150.0


@dataclass(frozen=True)
class SliceSpec:
    split: str
    cls: int
    patient: int
    scan: int
    slice_index: int
    n_slices: int
    seed: int
    site: str = "site_a"
    look: tuple = tuple(SITES["site_a"].values())  # gain, offset, noise, blur

    @property
    def fname(self) -> str:
        return f"{SOURCE}_{self.patient:04d}_{self.scan}_{self.slice_index:04d}.png"


def plan_slices(patients: dict, class_fractions: dict, slices_per_patient: tuple, seed: int, sites: int = 1,
                confounded: bool = False):
    """Assigns patients to splits, classes and sites (patient-disjoint by construction).

    Sites take turns within each split and class, so every site gets its share of each class (as far as the counts
    allow); with ``confounded`` every COVID-19 patient goes to the last site, the others take turns at the rest.
    """
    rng = np.random.default_rng(seed)
    site_rng = np.random.default_rng([seed, 1])  # its own stream: adding sites leaves classes and anatomy as they were
    names = list(SITES)[:sites]
    specs, number = [], 0
    for split in SPLITS:
        n_patients = int(patients[split])
        counts = _class_counts(n_patients, class_fractions)
        classes = [c for c, n in counts.items() for _ in range(n)]
        rng.shuffle(classes)
        turns = {cls: int(site_rng.integers(len(names))) for cls in counts}  # where each class's turns start
        for cls in classes:
            number += 1
            scan = int(rng.integers(1000, 9999))
            n = int(rng.integers(slices_per_patient[0], slices_per_patient[1] + 1))
            if confounded and len(names) > 1:
                site = names[-1] if cls == COVID else names[turns[cls] % (len(names) - 1)]
                look = CONFOUNDED_LOOK if site == names[-1] else SITES[site]
            else:
                site = names[turns[cls] % len(names)]
                look = SITES[site]
            turns[cls] += 1
            for k in range(n):
                specs.append(SliceSpec(split, int(cls), number, scan, k, n, int(rng.integers(2**31)), site,
                                       tuple(look.values())))
    return specs


def _class_counts(n_patients: int, class_fractions: dict) -> dict:
    names = {"normal": NORMAL, "pneumonia": PNEUMONIA, "covid": COVID}
    counts = {names[k]: int(round(v * n_patients)) for k, v in class_fractions.items()}
    counts[NORMAL] += n_patients - sum(counts.values())
    return counts


def render_slice(spec: SliceSpec, size: int = 512):
    """Returns (image uint8 HxW, lesion mask bool HxW, bbox (xmin, ymin, xmax, ymax))."""
    # Anatomy is fixed per patient, lesions and noise per slice.
    patient_rng = np.random.default_rng(spec.patient * 7919 + spec.scan)
    rng = np.random.default_rng(spec.seed)
    s = size / 512.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    cx = size / 2 + patient_rng.uniform(-55, 55) * s
    cy = size / 2 + patient_rng.uniform(-40, 40) * s
    a = patient_rng.uniform(165, 215) * s  # body half-width
    b = patient_rng.uniform(115, 155) * s  # body half-height
    theta = math.radians(patient_rng.uniform(-7, 7))
    # Lungs grow towards the middle of the scan and shrink at its ends.
    z = (spec.slice_index + 0.5) / spec.n_slices
    lung_scale = 0.7 + 0.3 * math.sin(math.pi * z)

    img = np.full((size, size), AIR, np.float32)
    body = _ellipse(xx, yy, cx, cy, a, b, theta)
    img[body <= 1.0] = FAT
    img[body <= 0.86**2] = MUSCLE

    # CT table: a bright arc under the body, outside the bounding box.
    table_y = cy + b + patient_rng.uniform(12, 30) * s
    arc = np.abs(yy - table_y - ((xx - cx) / (1.6 * a)) ** 2 * 25 * s) < 4 * s
    img[arc & (np.abs(xx - cx) < 1.3 * a)] = TABLE

    heart = _ellipse(xx, yy, cx + 0.08 * a, cy + 0.05 * b, 0.22 * a, 0.36 * b, theta)
    img[heart <= 1.0] = HEART

    lungs = np.zeros((size, size), bool)
    lung_geom = []
    for side in (-1, 1):
        lx = cx + side * 0.44 * a * math.cos(theta)
        ly = cy - 0.06 * b + side * 0.44 * a * math.sin(theta)
        la = 0.30 * a * lung_scale * patient_rng.uniform(0.92, 1.05)
        lb = 0.60 * b * lung_scale * patient_rng.uniform(0.92, 1.05)
        tilt = theta + side * math.radians(patient_rng.uniform(4, 12))
        r = _ellipse(xx, yy, lx, ly, la, lb, tilt)
        lungs |= r <= 1.0
        lung_geom.append((lx, ly, la, lb, tilt))
    img[lungs] = LUNG

    # Spine and ribs.
    sx, sy = cx - 0.72 * b * math.sin(theta), cy + 0.72 * b * math.cos(theta)
    vert = _ellipse(xx, yy, sx, sy, 0.13 * b, 0.11 * b, theta)
    img[vert <= 1.0] = BONE
    img[vert <= 0.45] = BONE - 50
    for phi in np.linspace(0, 2 * math.pi, 18, endpoint=False):
        if abs(math.sin(phi)) > 0.95:  # leave room for the sternum and the spine
            continue
        rx = cx + 0.93 * (a * math.cos(phi) * math.cos(theta) - b * math.sin(phi) * math.sin(theta))
        ry = cy + 0.93 * (a * math.cos(phi) * math.sin(theta) + b * math.sin(phi) * math.cos(theta))
        rib = _ellipse(xx, yy, rx, ry, 7 * s, 4.5 * s, phi + math.pi / 2)
        img[rib <= 1.0] = BONE

    # Vessels: small bright dots and short streaks in every lung, whatever the class.
    n_vessels = int(rng.integers(18, 34))
    for _ in range(n_vessels):
        lx, ly, la, lb, tilt = lung_geom[rng.integers(2)]
        px, py = _point_in_ellipse(rng, lx, ly, la, lb, tilt, 0.0, 0.85)
        _stamp(img, px, py, rng.uniform(1.2, 3.0) * s, rng.uniform(55, 100), lungs)

    lesion = np.zeros((size, size), np.float32)
    if spec.cls == COVID:
        _add_ground_glass(lesion, rng, lung_geom)
    elif spec.cls == PNEUMONIA:
        _add_consolidation(lesion, rng, lung_geom)
    lesion *= lungs
    mask = lesion > 8.0
    img += lesion

    # Take the added intensity back out of the body, so the mean gray level carries no label.
    inside = body <= 1.0
    img[inside] -= lesion.sum() / max(int(inside.sum()), 1)

    site_gain, site_offset, site_noise, site_blur = spec.look
    img = gaussian_filter(img, sigma=site_blur * s)
    gain, offset = patient_rng.uniform(0.92, 1.08), patient_rng.uniform(-6, 6)
    img = (img * gain + offset) * site_gain + site_offset + rng.normal(0.0, site_noise, img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    ys, xs = np.nonzero(inside)
    pad = int(rng.integers(2, 8))
    bbox = (
        max(int(xs.min()) - pad, 0),
        max(int(ys.min()) - pad, 0),
        min(int(xs.max()) + pad, size - 1),
        min(int(ys.max()) + pad, size - 1),
    )
    return image, mask, bbox


def _ellipse(xx, yy, cx, cy, a, b, theta):
    """Squared normalised radius of a rotated ellipse: <= 1 inside."""
    c, s = math.cos(theta), math.sin(theta)
    dx, dy = xx - cx, yy - cy
    u = (dx * c + dy * s) / a
    v = (-dx * s + dy * c) / b
    return u * u + v * v


def _point_in_ellipse(rng, cx, cy, a, b, theta, r_min, r_max):
    r = math.sqrt(rng.uniform(r_min**2, r_max**2))
    phi = rng.uniform(0, 2 * math.pi)
    u, v = r * a * math.cos(phi), r * b * math.sin(phi)
    c, s = math.cos(theta), math.sin(theta)
    return cx + u * c - v * s, cy + u * s + v * c


def _stamp(img, px, py, sigma, amp, within=None):
    """Adds a Gaussian blob on a local window only (fast enough for dozens per slice)."""
    h, w = img.shape
    r = int(3 * sigma) + 1
    x0, x1 = max(int(px) - r, 0), min(int(px) + r + 1, w)
    y0, y1 = max(int(py) - r, 0), min(int(py) + r + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    blob = amp * np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * sigma**2))
    if within is not None:
        blob = blob * within[y0:y1, x0:x1]
    img[y0:y1, x0:x1] += blob


def _textured_blob(lesion, rng, px, py, rx, ry, amp, edge):
    """A lesion: an irregular, textured patch with a soft (ground glass) or sharp (consolidation) edge."""
    h, w = lesion.shape
    r = int(max(rx, ry) * 1.6) + 2
    x0, x1 = max(int(px) - r, 0), min(int(px) + r + 1, w)
    y0, y1 = max(int(py) - r, 0), min(int(py) + r + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    rot = rng.uniform(0, math.pi)
    d = np.sqrt(_ellipse(xx, yy, px, py, rx, ry, rot))
    wobble = gaussian_filter(rng.normal(0, 1, d.shape), sigma=max(rx, ry) / 4) * 2.5
    d = d + 0.25 * wobble
    profile = 1.0 / (1.0 + np.exp((d - 1.0) / edge))
    texture = 1.0 + 0.35 * gaussian_filter(rng.normal(0, 1, d.shape), sigma=1.5)
    np.maximum(lesion[y0:y1, x0:x1], amp * profile * texture, out=lesion[y0:y1, x0:x1])


def _add_ground_glass(lesion, rng, lung_geom):
    """COVID-19: several hazy patches, in both lungs, hugging the pleura."""
    for side in (0, 1):
        for _ in range(int(rng.integers(1, 3))):
            lx, ly, la, lb, tilt = lung_geom[side]
            px, py = _point_in_ellipse(rng, lx, ly, la, lb, tilt, 0.62, 0.9)
            size = rng.uniform(0.18, 0.3) * la
            _textured_blob(lesion, rng, px, py, size * rng.uniform(0.8, 1.3), size, rng.uniform(40, 58), 0.18)


def _add_consolidation(lesion, rng, lung_geom):
    """Pneumonia: one or two dense, sharply bounded regions, mostly in the dependent lung."""
    sides = [int(rng.integers(2))] if rng.uniform() < 0.7 else [0, 1]
    for side in sides:
        lx, ly, la, lb, tilt = lung_geom[side]
        px, py = _point_in_ellipse(rng, lx, ly + 0.35 * lb, la * 0.6, lb * 0.5, tilt, 0.0, 0.8)
        size = rng.uniform(0.3, 0.45) * la
        _textured_blob(lesion, rng, px, py, size * rng.uniform(0.9, 1.5), size, rng.uniform(80, 100), 0.06)


def _write_one(args):
    spec, root, size = args
    image, mask, bbox = render_slice(spec, size)
    Image.fromarray(image, mode="L").save(root / IMAGES_DIR / spec.fname, optimize=False, compress_level=1)
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(root / "masks" / spec.fname, compress_level=1)
    return spec, bbox


def check_params(sample: dict) -> list[str]:
    """The ``sample:`` section (the phantom generator's settings)."""
    problems = Problems(unknown_keys("sample", sample, ("seed", "image_size", "patients", "class_fractions",
                                                       "slices_per_patient", "sites", "confounded")))
    problems += integer("sample.sites", sample.get("sites", 1), 1, len(SITES))
    confounded = sample.get("confounded", False)
    problems.require(isinstance(confounded, bool), f"sample.confounded={confounded!r}: true or false")
    problems += seed_int("sample.seed", sample.get("seed"))
    problems += integer("sample.image_size", sample.get("image_size"), 32, 8192)
    fractions, names = sample.get("class_fractions"), ("normal", "pneumonia", "covid")
    problems.require(isinstance(fractions, dict) and set(fractions) <= set(names) and bool(fractions)
                     and all(is_number(v) and 0 <= v <= 1 for v in fractions.values())
                     and sum(fractions.values()) <= 1 + 1e-9,
                     f"sample.class_fractions={fractions!r}: fractions in [0, 1] of {list(names)}, summing to at "
                     "most 1 (normal gets the rest)")
    patients = sample.get("patients")
    problems.require(isinstance(patients, dict) and set(patients) == set(SPLITS)
                     and all(is_positive_int(v) for v in patients.values()),
                     f"sample.patients={patients!r}: a positive count for each of {list(SPLITS)}")
    span = sample.get("slices_per_patient")
    problems.require(isinstance(span, list) and len(span) == 2 and all(is_positive_int(v) for v in span)
                     and span[0] <= span[1], f"sample.slices_per_patient={span!r}: [min, max], 1 <= min <= max")
    return problems


def generate(root: str | os.PathLike, patients: dict, class_fractions: dict, slices_per_patient=(9, 12),
             image_size: int = 512, seed: int = 0, workers: int = 0, progress: bool = True, sites: int = 1,
             confounded: bool = False) -> dict:
    """Writes the sample under ``root``; returns counts per split and class."""
    from tqdm import tqdm

    root = Path(root)
    (root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    specs = plan_slices(patients, class_fractions, tuple(slices_per_patient), seed, sites, confounded)
    workers = workers or os.cpu_count() or 1
    lines = {split: [] for split in SPLITS}
    counts = {split: {CLASS_NAMES[c]: 0 for c in CLASS_NAMES} for split in SPLITS}
    jobs = [(spec, root, image_size) for spec in specs]
    with ProcessPoolExecutor(workers) as pool:
        results = pool.map(_write_one, jobs, chunksize=16)
        for spec, bbox in tqdm(results, total=len(jobs), desc="sample", unit="img", disable=not progress):
            lines[spec.split].append(f"{spec.fname} {spec.cls} {bbox[0]} {bbox[1]} {bbox[2]} {bbox[3]}")
            counts[spec.split][CLASS_NAMES[spec.cls]] += 1
    for split in SPLITS:
        atomic_write_text(root / split_filename(split), "\n".join(lines[split]) + "\n")
    patients_seen = {patient_id(spec.fname): spec for spec in specs}
    atomic_write_text(root / "metadata.csv", "patient id,source,finding\n" + "".join(
        f"{pid},{spec.site},{CLASS_NAMES[spec.cls]}\n" for pid, spec in patients_seen.items()))
    return counts
