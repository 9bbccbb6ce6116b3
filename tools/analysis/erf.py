"""Effective receptive field of the centre output pixel of the last stage, as a PNG heatmap.

ERF(p) = mean over inputs of ReLU(d ReLU(f_c) / d x_p) summed over colour channels, f_c the last stage's centre
feature (summed over channels). Shown normalised, x ** 0.2 / max (``--norm power``, the VMamba paper's figures) or
log10 over four decades (``--norm log``). With ``--compare-random`` the randomly initialised model ("before
training") is drawn beside the checkpoint ("after training").

    python tools/analysis/erf.py --arch tiny --checkpoint vssm1_tiny.pth --compare-random --images val/ --size 1024
    python tools/analysis/erf.py --arch tiny --size 256 --num-images 2 --device cpu --out erf.png     # random inputs
"""
from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvmamba.utils.cli import build_model_from_args, load_weights_from_args, model_arguments, parse_model_args
from mmvmamba.utils.visual import figure, input_batches, save_figure


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[model_arguments('a config file (its backbone is analysed)')])
    parser.add_argument('--compare-random', action='store_true',
                        help='draw the random initialisation beside the checkpoint (before / after training)')
    parser.add_argument('--images', help='a folder of images (default: standard normal noise inputs)')
    parser.add_argument('--num-images', type=int, help='inputs averaged (default: 50 images, 8 noise inputs)')
    parser.add_argument('--size', type=int, default=1024, help='square input size')
    parser.add_argument('--norm', choices=('power', 'log'), default='power')
    parser.add_argument('--seed', type=int, default=0, help='seeds the initialisation and the noise inputs')
    parser.add_argument('--out', default='work_dirs/erf.png')
    args = parse_model_args(parser, argv)
    if args.compare_random and not args.checkpoint:
        parser.error('--compare-random needs --checkpoint (the trained model to compare with)')
    return args


def input_gradient_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ReLU of the gradient of the last stage's centre feature w.r.t. the input, summed over batch and colour."""
    x = x.requires_grad_()
    out = backbone(x)
    out = out[-1] if isinstance(out, (list, tuple)) else out
    centre = F.relu(out[:, :, out.shape[2] // 2, out.shape[3] // 2]).sum()
    (grad,) = torch.autograd.grad(centre, x)
    return F.relu(grad).sum((0, 1))


def effective_receptive_field(backbone: nn.Module, inputs, device: str) -> np.ndarray:
    """The mean input-gradient map over ``inputs`` (unnormalised, float64 (H, W)); non-finite maps are skipped."""
    backbone = backbone.to(device).eval().requires_grad_(False)
    total, count = None, 0
    for x in inputs:
        grad_map = input_gradient_map(backbone, x.to(device)).double().cpu()
        if not torch.isfinite(grad_map).all():
            continue
        total = grad_map if total is None else total + grad_map
        count += 1
    if count == 0:
        raise RuntimeError('every input gave a non-finite gradient')
    return (total / count).numpy()


def normalise(erf: np.ndarray, norm: str = 'power') -> np.ndarray:
    """To [0, 1]: ``x ** 0.2 / max`` ('power') or log10 of x / max clipped at 1e-4 and rescaled ('log')."""
    erf = erf / max(erf.max(), np.finfo(np.float64).tiny)
    if norm == 'power':
        return erf ** 0.2
    return (np.log10(np.clip(erf, 1e-4, None)) + 4) / 4


def area_for_share(erf: np.ndarray, share: float) -> float:
    """The smallest centred square holding ``share`` of the total contribution, as a fraction of the image area."""
    h, w = erf.shape
    total = erf.sum()
    for r in range(1, max(h, w) // 2 + 1):
        window = erf[max(h // 2 - r, 0):h // 2 + r + 1, max(w // 2 - r, 0):w // 2 + r + 1]
        if window.sum() >= share * total:
            return min(1.0, window.size / erf.size)
    return 1.0


def plot(maps: list[tuple[str, np.ndarray]], path: str) -> str:
    fig, axes = figure(len(maps))
    for ax, (title, erf) in zip(axes, maps, strict=True):
        ax.imshow(erf, cmap='RdYlGn', vmin=0, vmax=1, interpolation='bilinear')
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, np.ndarray]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    backbone = build_model_from_args(args, backbone_only=True)
    name = args.config or f'VMamba {args.arch}'
    models = []
    if args.compare_random or not args.checkpoint:
        models.append(('random init', copy.deepcopy(backbone) if args.checkpoint else backbone))
    if args.checkpoint:
        load_weights_from_args(backbone, args)
        models.append(('trained', backbone))
    count = args.num_images or (50 if args.images else 8)
    maps = {}
    for label, model in models:
        erf = effective_receptive_field(model, input_batches(args.images, count, args.size, args.seed), args.device)
        maps[label] = erf
        shares = ', '.join(f'{int(s * 100)}%: {area_for_share(erf, s):.3f}' for s in (0.2, 0.3, 0.5, 0.99))
        print(f'{label}: smallest centred square holding a share of the ERF, as a fraction of the image ({shares})')
    source = f'{count} images' if args.images else f'{count} noise inputs'
    plot([(f'{name}, {label}\n{args.size}px, {source}', normalise(erf, args.norm)) for label, erf in maps.items()],
         args.out)
    print(f'ERF written to {args.out}')
    return maps


if __name__ == '__main__':
    main()
