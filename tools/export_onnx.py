"""Export a VMamba backbone or classifier to ONNX with dynamic batch, height and width, and check it.

The graph has standard ONNX ops only: the scans are exported through an export-friendly formulation of the PyTorch
reference (the ops' 'export' backend, mmvmamba/ops/export_backend.py). After export, onnxruntime runs the file at the
export size and at every ``--check-sizes`` size, and each output is compared with PyTorch (relative L2 error).

    python tools/export_onnx.py --arch tiny --out vmamba_tiny.onnx                      # backbone, 4 feature maps
    python tools/export_onnx.py --arch tiny --classifier --checkpoint vssm1_tiny.pth --out vmamba_tiny_cls.onnx
    python tools/export_onnx.py configs/vmamba_t_8xb128_in1k.py --out cls.onnx --check-sizes 224 288x320
"""
from __future__ import annotations

import argparse
import os
import warnings

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import DictAction

from mmvmamba.ops import use_backend
from mmvmamba.ops.export_backend import MAX_LOG2_LENGTH
from mmvmamba.utils.config import TensorModel, build_model, get_backbone, load_weights, model_kind

OPSET = 17


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition('x')
    return int(h), int(w or h)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', help='a config file (classifiers export whole, other models their '
                                                  'backbone)')
    parser.add_argument('--arch', help='a VMamba preset instead of a config')
    parser.add_argument('--arch-options', nargs='+', action=DictAction, default={})
    parser.add_argument('--classifier', action='store_true', help='with --arch: export the classifier (logits)')
    parser.add_argument('--num-classes', type=int, default=1000)
    parser.add_argument('--checkpoint', help="weights: the authors' checkpoint or an MMEngine one")
    parser.add_argument('--checkpoint-key', default='auto')
    parser.add_argument('--size', type=parse_size, default=(224, 224), help='export input size, H or HxW')
    parser.add_argument('--check-sizes', type=parse_size, nargs='*', default=[(160, 256)],
                        help='further sizes run by onnxruntime after export (dynamic axes)')
    parser.add_argument('--tolerance', type=float, default=1e-4, help='largest relative L2 error accepted')
    parser.add_argument('--max-log2-length', type=int, default=MAX_LOG2_LENGTH,
                        help='the graph handles scans of up to 2**N steps (H*W/16 at stage 0)')
    parser.add_argument('--out', default='work_dirs/vmamba.onnx')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    if (args.config is None) == (args.arch is None):
        parser.error('give a config file or --arch')
    return args


def exportable(model: nn.Module) -> nn.Module:
    """Classifiers whole (logits); detectors and segmentors by their backbone (feature maps)."""
    if model_kind(model) in ('detector', 'segmentor'):
        model = get_backbone(model)
    return TensorModel(model).eval()


def export(model: nn.Module, path: str, size: tuple[int, int], max_log2_length: int = MAX_LOG2_LENGTH) -> list[str]:
    """Write ``model`` (tensor in, tensors out) to ``path`` with dynamic batch, height and width; returns the
    output names."""
    images = torch.randn(1, 3, *size)
    with torch.no_grad():
        outputs = model(images)
    count = 1 if isinstance(outputs, torch.Tensor) else len(outputs)
    names = ['logits'] if count == 1 and outputs.dim() == 2 else [f'feat{i}' for i in range(count)]
    dynamic = {'images': {0: 'batch', 2: 'height', 3: 'width'}}
    for name in names:
        dynamic[name] = {0: 'batch'} if name == 'logits' else {0: 'batch', 2: f'{name}_h', 3: f'{name}_w'}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad(), use_backend('export', max_log2_length=max_log2_length), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # tracer warnings on shape checks and the deprecation notice
        torch.onnx.export(model, (images,), path, dynamo=False, input_names=['images'], output_names=names,
                          dynamic_axes=dynamic, opset_version=OPSET)
    return names


def check(model: nn.Module, path: str, sizes: list[tuple[int, int]], seed: int = 0) -> list[tuple]:
    """Run the ONNX file with onnxruntime at each size; (size, output name, relative L2 error) per output."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for size in sizes:
        images = torch.randn(1, 3, *size, generator=generator)
        with torch.no_grad():
            expected = model(images)
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        got = session.run(None, {'images': images.numpy()})
        for output, ref, value in zip(session.get_outputs(), expected, got, strict=True):
            ref = ref.numpy()
            if ref.shape != value.shape:
                raise AssertionError(f'{output.name} at {size}: onnxruntime gave {value.shape}, PyTorch {ref.shape}')
            error = float(np.linalg.norm(value - ref) / max(np.linalg.norm(ref), 1e-30))
            rows.append((size, output.name, error))
    return rows


def main(argv: list[str] | None = None) -> list[tuple]:
    args = parse_args(argv)
    model = build_model(args.config, args.arch, cfg_options=args.cfg_options, arch_options=args.arch_options,
                        num_classes=args.num_classes if args.classifier else None)
    if args.checkpoint:
        print(f'loaded {load_weights(model, args.checkpoint, args.checkpoint_key)}')
    model = exportable(model)
    names = export(model, args.out, args.size, args.max_log2_length)
    print(f'exported {args.out} ({os.path.getsize(args.out) / 2 ** 20:.1f} MiB, opset {OPSET}), outputs {names}, '
          f'dynamic batch/height/width')
    rows = check(model, args.out, [args.size, *args.check_sizes])
    worst = max(error for _, _, error in rows)
    for size, name, error in rows:
        print(f'  {size[0]}x{size[1]} {name}: relative L2 error {error:.2e}')
    status = 'ok' if worst <= args.tolerance else 'FAILED'
    print(f'onnxruntime vs PyTorch: worst relative L2 error {worst:.2e} (tolerance {args.tolerance:.0e}): {status}')
    if worst > args.tolerance:
        raise SystemExit(1)
    return rows


if __name__ == '__main__':
    main()
