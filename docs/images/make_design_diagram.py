"""Draws docs/images/design.png, the path from a config to the kernels shown in docs/design.md.

    python docs/images/make_design_diagram.py
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'design.png')
COLOURS = {'main': '#dbe9f6', 'side': '#f3f3f3', 'ops': '#fde9c9'}

# One box a paragraph: "name x y width height colour | title", then its text. x and y are the lower-left corner in
# figure units (0..100).
BOX_SPEC = """
config 4 88 56 9 main | config  (configs/*.py)
default_scope = 'mmdet' | 'mmseg' | 'mmpretrain'
custom_imports = ['mmvmamba'];  backbone = dict(type='VMamba', arch='tiny', ...)

registry 4 75 56 9 main | MMEngine registry
import mmvmamba registers VMamba in the root MODELS registry;
mmdet / mmseg / mmpretrain build the detector, segmentor or classifier around it

vmamba 4 60 56 11 main | VMamba  (models/backbones/vmamba.py)
arch: a preset of ARCH_PRESETS (or an alias, or a dict) + overrides
patch embed -> 4 stages of VSS blocks, downsample between them
-> outnorm{i} -> NCHW maps at strides 4, 8, 16, 32

block 4 47 56 9 main | VSS block  (depths[i] per stage)
x = x + DropPath(SS2D(norm(x)))
x = x + DropPath(MLP(norm2(x)))      (mlp_ratio > 0)

ss2d 4 31 56 12 main | SS2D
in_proj -> depthwise conv 3x3 -> SiLU
-> project (x_proj: delta of rank R, B, C for 4 routes)
-> selective_scan (dt_proj + cross_selective_scan)
-> out_norm (-> x SiLU(z)) -> out_proj

ops 4 17 56 10 ops | operators  (mmvmamba.ops, source in ops/)
cross_scan, cross_merge, selective_scan, cross_selective_scan, layer_norm
dispatch.resolve(op, device, backend) picks the implementation per call

reference 4 4 17 9 ops | reference
PyTorch, any device;
defines the maths

triton 23.5 4 17 9 ops | triton
CUDA: Triton kernels
(triton_backend/)

mamba_ssm 43 4 17 9 ops | mamba_ssm
CUDA: its compiled
selective scan

checkpoint 66 60 31 11 side | models/checkpoint.py
init_cfg=Pretrained: read with
weights_only=True, legacy names
renamed, loaded strictly

tools 66 75 31 22 side | tools
train.py / test.py: MMEngine runner

utils/config.py: the same models
from a config or --arch

analysis/: FLOPs, timing, ERF,
activation maps (utils/cli.py,
utils/timing.py)

hooks 66 17 31 14 side | utils/scan_hooks.py
wraps the scan ops from outside:
FLOP counting (utils/flops.py),
activation maps, ONNX export
(utils/export.py)
"""


def parse_boxes(spec: str) -> dict[str, tuple]:
    """name -> (x, y, width, height, title, text, colour) from :data:`BOX_SPEC` (a blank line inside a box's text
    is kept when the next line does not start a new box)."""
    boxes: dict[str, tuple] = {}
    name = None
    for line in spec.strip().splitlines():
        head, _, title = line.partition(' | ')
        fields = head.split()
        if title and len(fields) == 6 and fields[5] in COLOURS:
            name, numbers = fields[0], [float(f) for f in fields[1:5]]
            boxes[name] = (*numbers, title, [], COLOURS[fields[5]])
        else:
            boxes[name][5].append(line)
    return {key: (*box[:5], '\n'.join(box[5]).strip(), box[6]) for key, box in boxes.items()}


BOXES = parse_boxes(BOX_SPEC)
ARROWS = [('config', 'registry'), ('registry', 'vmamba'), ('vmamba', 'block'), ('block', 'ss2d'), ('ss2d', 'ops'),
          ('ops', 'reference'), ('ops', 'triton'), ('ops', 'mamba_ssm'), ('checkpoint', 'vmamba'),
          ('tools', 'config'), ('hooks', 'ops')]


def anchor(name: str, towards: str) -> tuple[float, float]:
    """The middle of the side of box ``name`` that faces box ``towards``."""
    x, y, w, h = BOXES[name][:4]
    tx, ty, tw, th = BOXES[towards][:4]
    if tx >= x + w:
        return x + w, y + h / 2
    if tx + tw <= x:
        return x, y + h / 2
    centre = min(max(tx + tw / 2, x + 2), x + w - 2)
    return (centre, y) if ty < y else (centre, y + h)


def main() -> None:
    fig = plt.figure(figsize=(11, 10), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_axis_off()
    for x, y, w, h, title, body, colour in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle='round,pad=0.3', facecolor=colour, edgecolor='#555555'))
        ax.text(x + 1, y + h - 1.2, title, fontsize=10.5, fontweight='bold', va='top')
        ax.text(x + 1, y + h - 3.6, body, fontsize=8.6, va='top', family='monospace', linespacing=1.35)
    for start, end in ARROWS:
        ax.add_patch(FancyArrowPatch(anchor(start, end), anchor(end, start), arrowstyle='-|>', mutation_scale=14,
                                     color='#333333', linewidth=1.2, shrinkA=2, shrinkB=2))
    fig.savefig(OUT, dpi=100)
    plt.close(fig)
    print(f'written {OUT}')


if __name__ == '__main__':
    main()
