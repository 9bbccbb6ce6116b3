"""FLOPs and parameters of a VMamba backbone, classifier, detector or segmentor, counted as the authors did.

MMEngine's counter traces the model (convolutions, linear layers, matmuls, einsums, norms, pooling; one multiply-add
is one FLOP) and every selective scan call adds 9*B*L*D*N + B*L*D (see mmvmamba/utils/flops.py).

    python tools/analysis/get_flops.py --arch tiny                                     # classifier, 224x224
    python tools/analysis/get_flops.py configs/mask_rcnn_vmamba_t_1x.py                # 1280x800 by default
    python tools/analysis/get_flops.py configs/upernet_vmamba_t_512x512_160k_ade20k.py --shape 512 2048
"""
from __future__ import annotations

import argparse

import torch

from mmvmamba.utils.cli import build_model_from_args, model_arguments, parse_model_args
from mmvmamba.utils.config import DEFAULT_SHAPES, TensorModel
from mmvmamba.utils.flops import NOT_COUNTED, FlopReport, count_flops


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    model = model_arguments('an mmpretrain, mmdet or mmseg config file', checkpoint=False, device=False)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[model])
    parser.add_argument('--num-classes', type=int, default=1000, help='classifier head size with --arch')
    parser.add_argument('--backbone-only', action='store_true', help='count the backbone alone')
    parser.add_argument('--shape', type=int, nargs='+', help='input H [W] (default: 224, detectors 1280 800, '
                                                             'segmentors 512 2048)')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--run-scans', action='store_true',
                        help='run the scans during the trace (slower; only matters where values change the work)')
    parser.add_argument('--table', type=int, metavar='DEPTH', help='also print the per-module table to DEPTH')
    return parse_model_args(parser, argv)


def format_count(x: float) -> str:
    for unit, scale in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if abs(x) >= scale:
            return f'{x / scale:.3f} {unit}'
    return f'{x:.0f}'


def report_lines(report: FlopReport) -> list[str]:
    """The printed summary of one count."""
    ops = sorted(report.by_operator.items(), key=lambda kv: -kv[1])
    skipped = ', '.join(f'{name.replace("aten::", "")} x{n}' for name, n in sorted(report.not_counted.items()))
    return [
        f'params: {format_count(report.params)}',
        f'FLOPs:  {format_count(report.flops)}   (selective scans: {format_count(report.scan_flops)} in '
        f'{report.scan_calls} calls, 9*B*L*D*N + B*L*D each)',
        'by operator: ' + ', '.join(f'{name} {format_count(v)}' for name, v in ops),
        f'not counted: {NOT_COUNTED}; in this graph: {skipped or "none"}',
    ]


def main(argv: list[str] | None = None) -> FlopReport:
    args = parse_args(argv)
    model = TensorModel(build_model_from_args(args, num_classes=args.num_classes, backbone_only=args.backbone_only))
    shape = tuple(args.shape) if args.shape else DEFAULT_SHAPES[model.kind]
    shape = shape * 2 if len(shape) == 1 else shape
    inputs = torch.randn(args.batch, 3, *shape)
    report = count_flops(model, inputs, run_scans=args.run_scans)
    name = args.config or f'VMamba {args.arch}'
    print(f'{name}: {model.kind}, input {tuple(inputs.shape)}')
    print('\n'.join(report_lines(report)))
    if args.table is not None:
        from mmengine.analysis.print_helper import complexity_stats_table
        print(complexity_stats_table(flops=report.analyzer, max_depth=args.table, show_param_shapes=False))
    return report


if __name__ == '__main__':
    main()
