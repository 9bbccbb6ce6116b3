"""The "attention-like" activation map of one SS2D layer for a query pixel, overlaid on the input image.

Unrolling the selective scan of route k, the output at sequence step t is a weighted sum of the inputs at steps
s <= t with weight, per channel d, C_t^T (prod_{s<r<=t} exp(delta_r A_d)) delta_s B_s. The map averages these weights
over channels, maps each route's steps back to image positions (undoing the cross scan), sums the four routes and
shows the magnitude normalised to [0, 1]. The layer's scan inputs are captured while the model runs (no model edits).

    python tools/analysis/activation_map.py --arch tiny --checkpoint vssm1_tiny.pth --image dog.jpg --query 200 310
    python tools/analysis/activation_map.py --arch tiny --size 256 --device cpu --out act.png   # synthetic image
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from mmvmamba.models.backbones.vmamba import ROUTES
from mmvmamba.ops import cross_merge, cross_scan
from mmvmamba.utils.cli import build_model_from_args, load_weights_from_args, model_arguments, parse_model_args
from mmvmamba.utils.scan_hooks import record_scan_calls
from mmvmamba.utils.visual import figure, read_image, save_figure, synthetic_image, to_input


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[model_arguments('a config file (its backbone is analysed)')])
    parser.add_argument('--image', help='input image (default: a synthetic picture)')
    parser.add_argument('--size', type=int, default=512, help='square input size')
    parser.add_argument('--stage', type=int, default=2, help='stage of the SS2D layer (0-3)')
    parser.add_argument('--block', type=int, default=-1, help='block index within the stage')
    parser.add_argument('--query', type=int, nargs=2, metavar=('Y', 'X'), help='query pixel (default: the centre)')
    parser.add_argument('--routes', action='store_true', help='also draw each route on its own')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default='work_dirs/activation_map.png')
    return parse_model_args(parser, argv)


def capture_scan(backbone: torch.nn.Module, images: torch.Tensor, stage: int, block: int) -> dict:
    """The arguments of the cross selective scan of ``backbone.layers[stage].blocks[block].op`` on ``images``
    (tensors detached, on the CPU)."""
    layer = backbone.layers[stage].blocks[block].op
    with torch.no_grad(), record_scan_calls(layer) as calls:
        backbone(images)
    if len(calls) != 1 or calls[0]['op'] != 'cross_selective_scan':
        raise RuntimeError(f'expected one cross_selective_scan call in the layer, got {[c["op"] for c in calls]}')
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in calls[0].items()}


def route_contributions(scan: dict, query: tuple[int, int]) -> torch.Tensor:
    """(4, H, W): for each route, the channel-mean weight of every position on the output at ``query`` (feature
    coordinates), in image layout; positions the route has not reached yet are 0."""
    x = scan['x']
    _, channels, height, width = x.shape
    length = height * width
    dtype = torch.float64
    delta = scan['delta'][:1].to(dtype)
    if scan.get('delta_weight') is not None:  # the rank-R input of dt_proj
        delta = torch.einsum('bkrhw,kcr->bkchw', delta, scan['delta_weight'].to(dtype))
    delta = cross_scan(delta)[0]  # (4, C, L) in each route's order
    if scan['delta_bias'] is not None:
        delta = delta + scan['delta_bias'].to(dtype).view(ROUTES, channels, 1)
    dt = F.softplus(delta) if scan['delta_softplus'] else delta
    b_seq, c_seq = (cross_scan(scan[k][:1].to(dtype))[0] for k in ('B', 'C'))  # (4, N, L)
    a = scan['A'].to(dtype)
    if scan.get('A_is_log'):  # the model passes A_logs: A = -exp(A_logs)
        a = -torch.exp(a)
    a = a.view(ROUTES, channels, -1)  # (4, C, N)
    # the step at which each route reaches the query: scan a map of pixel indices
    index = torch.arange(length, dtype=dtype).view(1, 1, height, width)
    order = cross_scan(index)[0, :, 0]  # (4, L): pixel index at each step
    target = query[0] * width + query[1]
    maps = []
    for k in range(ROUTES):
        t = int((order[k] == target).nonzero())
        log_decay = torch.cumsum(dt[k].unsqueeze(1) * a[k].unsqueeze(-1), dim=-1)  # (C, N, L): sum_{r<=s}
        steps = slice(0, t + 1)
        decay = torch.exp(log_decay[:, :, t:t + 1] - log_decay[:, :, steps])  # prod_{s<r<=t} exp(delta_r A)
        weight = (c_seq[k, :, t].view(1, -1, 1) * decay * b_seq[k, :, steps].unsqueeze(0)).sum(1) * dt[k, :, steps]
        seq = torch.zeros(length, dtype=dtype)
        seq[steps] = weight.mean(0)
        maps.append(seq)
    # undo each route: cross_merge of one route at a time gives its map in image layout
    per_route = torch.stack(maps).view(1, ROUTES, 1, height, width)
    return torch.stack([cross_merge(per_route * (torch.arange(ROUTES) == k).view(1, ROUTES, 1, 1, 1))
                        .view(height, width) for k in range(ROUTES)])


def normalise(m: torch.Tensor) -> np.ndarray:
    m = m.abs()
    return (m / m.max().clamp_min(torch.finfo(m.dtype).tiny)).numpy()


def upsample(m: np.ndarray, size: int) -> np.ndarray:
    return F.interpolate(torch.from_numpy(m)[None, None], size=(size, size), mode='bilinear',
                         align_corners=False)[0, 0].numpy()


def plot(image: np.ndarray, maps: list[tuple[str, np.ndarray]], query: tuple[int, int], title: str, path: str) -> str:
    fig, axes = figure(1 + len(maps))
    axes[0].imshow(image)
    axes[0].set_title(title, fontsize=8)
    for ax, (label, m) in zip(axes[1:], maps, strict=True):
        ax.imshow(image)
        ax.imshow(upsample(m, image.shape[0]), cmap='jet', alpha=0.55, vmin=0, vmax=1)
        ax.set_title(label, fontsize=9)
    for ax in axes:
        ax.plot(query[1], query[0], marker='*', color='white', markeredgecolor='black', markersize=14)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> np.ndarray:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    backbone = build_model_from_args(args, backbone_only=True)
    load_weights_from_args(backbone, args)
    backbone = backbone.to(args.device).eval()
    image = read_image(args.image, args.size) if args.image else synthetic_image(args.size, args.seed)
    query = tuple(args.query) if args.query else (args.size // 2, args.size // 2)
    if not all(0 <= q < args.size for q in query):
        raise SystemExit(f'--query {query} is outside the {args.size}x{args.size} input')
    scan = capture_scan(backbone, to_input(image).to(args.device), args.stage, args.block)
    height, width = scan['x'].shape[2:]
    feature_query = (query[0] * height // args.size, query[1] * width // args.size)
    routes = route_contributions(scan, feature_query)
    combined = normalise(routes.sum(0))
    maps = [(f'stage {args.stage} block {args.block}, 4 routes', combined)]
    if args.routes:
        maps += [(f'route {k}', normalise(routes[k])) for k in range(ROUTES)]
    weights = 'random init' if not args.checkpoint else args.checkpoint.rsplit('/', 1)[-1]
    title = f'{args.config or "VMamba " + args.arch} ({weights})\nquery {query}, map {height}x{width}'
    plot(image, maps, query, title, args.out)
    print(f'activation map for query {query} (feature {feature_query} of {height}x{width}) written to {args.out}')
    return combined


if __name__ == '__main__':
    main()
