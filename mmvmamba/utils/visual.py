"""Images in and figures out for the analysis tools (ERF, activation maps)."""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def read_image(path: str, size: int) -> np.ndarray:
    """An RGB image resized (bicubic, shorter side) and centre-cropped to ``size`` x ``size``, uint8 (H, W, 3)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert('RGB')
        scale = size / min(img.size)
        img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))),
                         Image.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        return np.asarray(img.crop((left, top, left + size, top + size)))


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """A deterministic test picture (gradient sky, ground, a disc and a box; ``seed`` moves the disc), uint8
    (size, size, 3)."""
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.35 + 0.3 * y, 0.55 + 0.2 * y, 0.9 - 0.2 * y], axis=-1)
    img[y > 0.68] = (0.35, 0.55, 0.25)
    img[(x - 0.3 - 0.07 * (seed % 4)) ** 2 + (y - 0.42) ** 2 < 0.12 ** 2] = (0.95, 0.75, 0.1)
    img[(abs(x - 0.7) < 0.12) & (abs(y - 0.6) < 0.16)] = (0.75, 0.2, 0.2)
    return (img * 255).astype(np.uint8)


def to_input(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> a normalised (1, 3, H, W) float tensor (ImageNet mean and std)."""
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def image_files(folder: str) -> list[str]:
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                   if name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f'No images ({", ".join(IMAGE_SUFFIXES)}) under {folder!r}.')
    return files


def input_batches(folder: str | None, count: int, size: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """``count`` normalised (1, 3, size, size) inputs: images from ``folder``, or standard normal noise."""
    if folder is None:
        generator = torch.Generator().manual_seed(seed)
        for _ in range(count):
            yield torch.randn(1, 3, size, size, generator=generator)
        return
    for path in image_files(folder)[:count]:
        yield to_input(read_image(path, size))


def figure(panels: int, panel_px: int = 400, title_px: int = 30):
    """A matplotlib figure of ``panels`` square axes side by side, with an exact pixel size
    (``panels * panel_px`` x ``panel_px + title_px``), ticks off."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    dpi = 100
    fig = plt.figure(figsize=(panels * panel_px / dpi, (panel_px + title_px) / dpi), dpi=dpi)
    axes = []
    height = panel_px / (panel_px + title_px)
    for i in range(panels):
        ax = fig.add_axes((i / panels + 0.01, 0.01, 1 / panels - 0.02, height - 0.02))
        ax.set_axis_off()
        axes.append(ax)
    return fig, axes


def save_figure(fig, path: str) -> str:
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=fig.dpi)
    plt.close(fig)
    return path
