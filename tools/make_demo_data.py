"""Write the embedded demo data sets: synthetic shapes in COCO (instances) and ADE20K (semantic) layout, and real
handwritten digits in mmpretrain ``CustomDataset`` layout.

Each image shows one to three non-overlapping shapes of similar areas on a weakly coloured, textured, noisy
background: discs in reds, squares in greens, triangles in blues (random hue within +-25 degrees, saturation and
brightness). Shapes are polygons with integer vertices: the COCO segmentation is the drawn polygon, its box and area
and the ADE20K label map are the drawn pixels.

The digits are scikit-learn's ``load_digits()`` (1,797 8x8 images of 43 writers, 10 classes, shipped inside the
scikit-learn package: no download), upsampled to ``--digit-size`` pixels as white-on-black 3-channel PNGs and split
into train and test sets of the same class proportions. The annotation files list ``test/0012.png 7`` lines:
file (relative to ``OUT/digits``, named by the index in ``load_digits()``) and label.

The output is deterministic for a given ``--seed`` and sizes::

    OUT/coco/{train2017,val2017}/*.jpg, OUT/coco/annotations/instances_{train2017,val2017}.json
    OUT/ade/ADEChallengeData2016/{images,annotations}/{training,validation}/*.{jpg,png}
    OUT/digits/{train,test}/*.png, OUT/digits/meta/{train,test}.txt

ADE20K convention: label 0 is "other" (ignored with ``reduce_zero_label=True``), 1 background, 2 disc, 3 square,
4 triangle.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np
from sklearn.datasets import load_digits

CLASSES = ('disc', 'square', 'triangle')
HUES = (0, 60, 120)  # OpenCV hue of each class: red, green, blue
# circumradius of a disc, square and equilateral triangle with the area of a unit square: shapes of one size have
# equal areas, so no class is rarer in pixels
CIRCUMRADIUS_PER_SIDE = (1 / math.sqrt(math.pi), 1 / math.sqrt(2), 1 / math.sqrt(0.75 * math.sqrt(3)))
SPLITS = (('train2017', 'training'), ('val2017', 'validation'))
MIN_DIGIT_SIZE = 32  # the smallest input of the VMamba backbone: one stride of its last stage


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/demo', help='output folder (default: data/demo)')
    parser.add_argument('--num-train', type=int, default=100, help='training images (default: 100)')
    parser.add_argument('--num-val', type=int, default=20, help='validation images (default: 20)')
    parser.add_argument('--min-size', type=int, default=128, help='smallest image side (default: 128)')
    parser.add_argument('--max-size', type=int, default=160, help='largest image side (default: 160)')
    parser.add_argument('--digit-size', type=int, default=MIN_DIGIT_SIZE,
                        help=f'side of the upsampled digit images, >= {MIN_DIGIT_SIZE} (default: {MIN_DIGIT_SIZE})')
    parser.add_argument('--digits-test-fraction', type=float, default=0.2,
                        help='share of each digit class held out for testing (default: 0.2)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    args = parser.parse_args()
    if args.digit_size < MIN_DIGIT_SIZE:
        parser.error(f'--digit-size must be >= {MIN_DIGIT_SIZE} (the backbone\'s smallest input), '
                     f'got {args.digit_size}')
    if not 0 < args.digits_test_fraction < 1:
        parser.error(f'--digits-test-fraction must be in (0, 1), got {args.digits_test_fraction}')
    return args


def textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A weakly coloured field with low-frequency blobs and pixel noise, uint8 (H, W, 3)."""
    base = rng.uniform(60, 190) + rng.uniform(-20, 20, size=3)
    blobs = rng.normal(0, 35, size=(rng.integers(3, 7), rng.integers(3, 7), 1)) + rng.normal(
        0, 8, size=(1, 1, 3))
    field = cv2.resize(blobs.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC).reshape(
        height, width, -1)
    noise = rng.normal(0, 12, size=(height, width, 3))
    return np.clip(base + field + noise, 0, 255).astype(np.uint8)


def shape_polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) in (x, y) of a disc (32-gon), square or triangle of circumradius ``radius``."""
    corners = {'disc': 32, 'square': 4, 'triangle': 3}[kind]
    t = angle + np.arange(corners) * 2 * math.pi / corners
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)


def shape_colour(rng: np.random.Generator, label: int) -> list[int]:
    """A saturated BGR colour from the class's hue family (red discs, green squares, blue triangles) +- 25 degrees."""
    hue = (HUES[label] + rng.uniform(-12.5, 12.5)) % 180  # OpenCV hue: 0..180
    hsv = np.array([[[hue, rng.uniform(150, 255), rng.uniform(130, 255)]]], dtype=np.uint8)
    return [int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]]


def make_scene(rng: np.random.Generator, min_size: int, max_size: int):
    """One image with its instances: list of (class index, polygon)."""
    height, width = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    image = textured_background(rng, height, width)
    placed: list[tuple[float, float, float]] = []
    instances = []
    for _ in range(int(rng.integers(1, 4))):
        label = int(rng.integers(len(CLASSES)))
        for _attempt in range(20):  # rejection sampling: shapes never overlap, so polygons stay exact
            radius = float(rng.uniform(26, 50)) * CIRCUMRADIUS_PER_SIDE[label]  # side of the equal-area square
            cx = float(rng.uniform(radius + 2, width - radius - 2))
            cy = float(rng.uniform(radius + 2, height - radius - 2))
            if all(math.hypot(cx - x, cy - y) > radius + r + 4 for x, y, r in placed):
                break
        else:
            continue
        placed.append((cx, cy, radius))
        # integer vertices: the polygon in the annotations is exactly the one drawn
        polygon = np.round(shape_polygon(CLASSES[label], cx, cy, radius, float(rng.uniform(0, 2 * math.pi))))
        polygon = polygon.astype(np.int32)
        cv2.fillPoly(image, [polygon], shape_colour(rng, label))
        instances.append((label, polygon))
    return image, instances


def label_map(shape: tuple[int, int], instances) -> np.ndarray:
    """ADE20K-style labels: 1 background, 2 + class index for the shapes."""
    labels = np.ones(shape, dtype=np.uint8)
    for label, polygon in instances:
        cv2.fillPoly(labels, [polygon], 2 + label)
    return labels


def coco_annotation(ann_id: int, image_id: int, label: int, polygon: np.ndarray, height: int, width: int) -> dict:
    """Box and area of the drawn pixels (OpenCV fills every pixel the outline touches), the polygon as drawn."""
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(mask, [polygon], 1)
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return dict(id=ann_id, image_id=image_id, category_id=label + 1, iscrowd=0, area=float(mask.sum()),
                bbox=[x0, y0, x1 - x0, y1 - y0], segmentation=[[int(v) for v in polygon.flatten()]])


def write_split(rng: np.random.Generator, out: Path, coco_split: str, ade_split: str, num: int, first_id: int,
                min_size: int, max_size: int) -> None:
    coco_dir = out / 'coco' / coco_split
    ade_root = out / 'ade' / 'ADEChallengeData2016'
    ade_img_dir, ade_ann_dir = ade_root / 'images' / ade_split, ade_root / 'annotations' / ade_split
    for folder in (coco_dir, ade_img_dir, ade_ann_dir, out / 'coco' / 'annotations'):
        folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(first_id, first_id + num):
        image, instances = make_scene(rng, min_size, max_size)
        height, width = image.shape[:2]
        name = f'{image_id:06d}'
        cv2.imwrite(str(coco_dir / f'{name}.jpg'), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(ade_img_dir / f'{name}.jpg'), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(ade_ann_dir / f'{name}.png'), label_map((height, width), instances))
        images.append(dict(id=image_id, file_name=f'{name}.jpg', height=height, width=width))
        for label, polygon in instances:
            annotations.append(coco_annotation(len(annotations) + 1, image_id, label, polygon, height, width))
    coco = dict(images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(CLASSES)])
    (out / 'coco' / 'annotations' / f'instances_{coco_split}.json').write_text(json.dumps(coco))


def stratified_split(rng: np.random.Generator, labels: np.ndarray, test_fraction: float) -> dict[str, np.ndarray]:
    """Sorted sample indices of a train and a test split holding ``test_fraction`` of every class (rounded)."""
    test = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test.append(members[:round(len(members) * test_fraction)])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test)] = True
    return {'train': np.flatnonzero(~is_test), 'test': np.flatnonzero(is_test)}


def write_digits(out: Path, size: int, test_fraction: float, seed: int) -> dict[str, int]:
    """scikit-learn's handwritten digits as mmpretrain ``CustomDataset`` splits; returns the images per split."""
    digits = load_digits()
    ink = digits.images / 16  # each pixel: the inked pixels (0..16) of a 4x4 block of the original 32x32 bitmap
    (out / 'meta').mkdir(parents=True, exist_ok=True)
    counts = {}
    # a generator of its own: the split does not change with the sizes of the synthetic sets
    splits = stratified_split(np.random.default_rng(seed), digits.target, test_fraction)
    for split, indices in splits.items():
        (out / split).mkdir(exist_ok=True)
        lines = []
        for index in indices:
            image = cv2.resize(ink[index].astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
            gray = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
            name = f'{split}/{index:04d}.png'
            cv2.imwrite(str(out / name), cv2.merge([gray, gray, gray]))
            lines.append(f'{name} {digits.target[index]}\n')
        (out / 'meta' / f'{split}.txt').write_text(''.join(lines))
        counts[split] = len(indices)
    return counts


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    rng = np.random.default_rng(args.seed)
    counts = (args.num_train, args.num_val)
    first_id = 1
    for (coco_split, ade_split), num in zip(SPLITS, counts, strict=True):
        write_split(rng, out, coco_split, ade_split, num, first_id, args.min_size, args.max_size)
        first_id += num
    print(f'demo data: {args.num_train} train / {args.num_val} val images of {len(CLASSES)} shape classes '
          f'({", ".join(CLASSES)}) in {out}/coco (COCO instances) and {out}/ade (ADE20K semantic)')
    digit_counts = write_digits(out / 'digits', args.digit_size, args.digits_test_fraction, args.seed)
    print(f'demo data: {digit_counts["train"]} train / {digit_counts["test"]} test handwritten digits of 10 classes, '
          f'{args.digit_size}x{args.digit_size}, in {out}/digits (mmpretrain CustomDataset)')


if __name__ == '__main__':
    main()
