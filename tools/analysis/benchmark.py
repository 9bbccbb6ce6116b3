"""Throughput and peak memory of VMamba, alone or against timm baselines measured in the same process.

Inference (forward) and training (forward + backward + AdamW step) in fp32 and bf16 autocast; warm-up excluded,
CUDA-event timing on GPU (synchronised wall time on CPU), the median of repeats. The last table is the result.

    # VMamba-T/S/B vs Swin-T/S/B and ConvNeXt-T, fp32 and bf16, inference and training, one H100:
    python tools/analysis/benchmark.py --arch tiny small base --compare --batch 128 --det
    # the same compiled (torch.compile on every model), and each step captured in a CUDA graph:
    python tools/analysis/benchmark.py --arch tiny --compare --batch 128 --compile
    python tools/analysis/benchmark.py --arch tiny --compare --batch 128 --cuda-graph
    # single-image CPU forward of VMamba-T:
    python tools/analysis/benchmark.py --device cpu --batch 1 --arch tiny --mode infer --size 224
    # throughput and FLOPs against resolution (PNG):
    python tools/analysis/benchmark.py --arch tiny --sweep --out work_dirs/sweep.png
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvmamba.models import VMamba, VMambaClassifier
from mmvmamba.models.backbones.vmamba import ARCH_ALIASES, compile_arguments
from mmvmamba.utils.cli import add_rounds_option, build_model_from_args, format_table, model_arguments, parse_model_args
from mmvmamba.utils.config import TensorModel, get_backbone, model_kind
from mmvmamba.utils.timing import kernel_profile, time_step

# the Swin of the same size as each VMamba preset: ratios are printed against it
SWIN = {'tiny': 'swin_tiny_patch4_window7_224', 'small': 'swin_small_patch4_window7_224',
        'base': 'swin_base_patch4_window7_224'}
CONVNEXT = 'convnext_tiny'
MMDET_SWIN = {SWIN['tiny']: dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
              SWIN['small']: dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
              SWIN['base']: dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))}
GLOBAL_ATTENTION = 'deit_small_patch16_224'
# stochastic depth of each baseline's ImageNet recipe (VMamba's presets carry theirs: 0.2 / 0.3 / 0.6 for T/S/B)
RECIPE_DROP_PATH = {SWIN['tiny']: 0.2, SWIN['small']: 0.3, SWIN['base']: 0.5, CONVNEXT: 0.1, GLOBAL_ATTENTION: 0.1}
SWEEP_SIZES = (224, 384, 512, 640, 768, 1024)


@dataclass
class Result:
    model: str
    params: int
    size: tuple[int, int]
    batch: int
    precision: str
    mode: str
    seconds: float  # median time of one iteration
    peak_bytes: int | None
    reference: str | None = None  # the model this one is compared with
    gpu_busy: float | None = None  # the step's GPU kernel time over its wall time (CUDA only)
    kernels: float | None = None  # GPU kernels launched a step (CUDA only)
    spread: float = 0.0  # over rounds: slowest over fastest time, minus 1

    @property
    def throughput(self) -> float:
        return self.batch / self.seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    model = model_arguments('a config file (classifiers run whole, other models their backbone)',
                            arch_help='VMamba presets, run as 1000-class classifiers (default: tiny)',
                            several_archs=True, checkpoint=False)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[model])
    parser.add_argument('--batch', type=int, help='images per step (default: 128 on GPU, 1 on CPU)')
    parser.add_argument('--size', type=int, nargs='+', default=[224], help='square input sizes')
    parser.add_argument('--mode', nargs='+', choices=('infer', 'train'), default=['infer', 'train'])
    parser.add_argument('--precision', nargs='+', choices=('fp32', 'bf16'), default=['fp32', 'bf16'])
    parser.add_argument('--warmup', type=int, help='untimed iterations first (default: 10 on GPU, 1 on CPU)')
    parser.add_argument('--iters', type=int, help='iterations per timed repeat (default: 30 on GPU, 2 on CPU)')
    parser.add_argument('--repeats', type=int, default=3, help='timed repeats; the median is reported')
    parser.add_argument('--compile', nargs='?', const='default', metavar='MODE',
                        help='torch.compile every model (VMamba and the baselines alike) with this mode '
                             '(default: "default"), VMamba through its backbone\'s compile arguments; the first '
                             'steps compile and are not timed')
    parser.add_argument('--cuda-graph', action='store_true',
                        help='capture each step (forward, or forward + backward + AdamW) in a CUDA graph and time '
                             'its replays (CUDA only)')
    add_rounds_option(parser, 'every model')
    parser.add_argument('--compare', action='store_true',
                        help='also run the matching timm Swin (and ConvNeXt-T), printing ratios against Swin')
    parser.add_argument('--det', action='store_true',
                        help='also time the backbones alone at detection size (forward + backward)')
    parser.add_argument('--det-size', type=int, nargs=2, default=[800, 1216], metavar=('H', 'W'))
    parser.add_argument('--det-batch', type=int, default=2)
    parser.add_argument('--sweep', action='store_true',
                        help='throughput and FLOPs against resolution, VMamba vs DeiT-S and Swin-T, as a PNG')
    parser.add_argument('--sweep-sizes', type=int, nargs='+', default=list(SWEEP_SIZES))
    parser.add_argument('--baselines', nargs='*', help='timm models for the sweep (default: DeiT-S and Swin-T; '
                                                       'none: VMamba only)')
    parser.add_argument('--flops-only', action='store_true', help='sweep FLOPs alone (no timing: quick on a CPU)')
    parser.add_argument('--out', default='work_dirs/benchmark_sweep.png', help='PNG written by --sweep')
    args = parse_model_args(parser, argv, default_arch=['tiny'])
    if args.cuda_graph and not args.device.startswith('cuda'):
        parser.error('--cuda-graph needs a CUDA device')
    if args.cuda_graph and args.compile:
        parser.error('give --compile or --cuda-graph, not both (a "reduce-overhead" compile uses CUDA graphs)')
    args.arch = args.arch or []  # a config: no presets
    gpu = args.device.startswith('cuda')
    args.batch = args.batch or (128 if gpu else 1)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    args.iters = args.iters or (30 if gpu else 2)
    return args


# --- models ---------------------------------------------------------------------------------------------------------

def preset_name(arch: str) -> str:
    return ARCH_ALIASES.get(arch, arch)


def vmamba_label(arch: str, options: dict) -> str:
    return f'VMamba {preset_name(arch)}' + (' (modified)' if options else '')


def size_of(arch: str) -> str:
    """tiny, small or base: the Swin a preset is compared with."""
    name = preset_name(arch)
    return next((s for s in SWIN if s in name), 'tiny')


def timm_model(name: str, **kwargs) -> nn.Module:
    try:
        import timm
    except ImportError as err:
        raise SystemExit(f'The baselines need timm (pip install timm): {err}') from err
    kwargs.setdefault('drop_path_rate', RECIPE_DROP_PATH.get(name, 0.0))
    return timm.create_model(name, pretrained=False, **kwargs)


def vmamba_models(args: argparse.Namespace) -> list[tuple[str, Callable[[], nn.Module], str]]:
    """(label, builder, Swin to compare with) for each VMamba model asked for."""
    if args.config:
        def build() -> nn.Module:
            model = build_model_from_args(args)
            return model if model_kind(model) == 'classifier' else get_backbone(model)
        return [(args.config.rsplit('/', 1)[-1], build, SWIN['tiny'])]
    return [(vmamba_label(a, args.arch_options), lambda a=a: VMambaClassifier(a, **args.arch_options),
             SWIN[size_of(a)]) for a in args.arch]


def loss_of(out) -> torch.Tensor:
    """Cross entropy against fixed labels for logits, the mean of every map for feature maps."""
    if isinstance(out, torch.Tensor) and out.dim() == 2:
        return F.cross_entropy(out.float(), torch.arange(out.shape[0], device=out.device) % out.shape[1])
    outs = out if isinstance(out, (list, tuple)) else [out]
    return sum(o.float().mean() for o in outs)


# --- timing ---------------------------------------------------------------------------------------------------------

class Step:
    """One benchmark setting of one model, built once and timed in as many rounds as asked: the step function
    (eager, compiled, or a CUDA graph's replay), its parameter count, its resident memory (weights, gradients and
    optimizer state, counted in its peak) and, after a warm-up, the seconds from the start of its setup to the end of
    its first step (moving the model, compiling the model and the Triton kernels, capturing the graph)."""

    def __init__(self, model: nn.Module, size: tuple[int, int], batch: int, precision: str, mode: str,
                 args: argparse.Namespace):
        started = time.perf_counter()
        device = torch.device(args.device)
        self.device = device
        before = torch.cuda.memory_allocated(device) if device.type == 'cuda' else 0
        if args.cuda_graph:  # the peak of the capture, below
            torch.cuda.reset_peak_memory_stats(device)
        model = TensorModel(model).to(device)
        self.params = sum(p.numel() for p in model.parameters())
        run = torch.compile(model, **compile_options(model, args.compile)) if args.compile else model
        images = torch.randn(batch, 3, *size, device=device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == 'bf16')
        if mode == 'infer':
            model.eval()

            def step() -> None:
                with torch.no_grad(), autocast:
                    run(images)
        else:
            model.train()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                          capturable=args.cuda_graph)

            def step() -> None:
                optimizer.zero_grad(set_to_none=not args.cuda_graph)
                with autocast:
                    loss = loss_of(run(images))
                loss.backward()
                optimizer.step()
        self.step = capture(step, device) if args.cuda_graph else step
        # a graph allocates its memory while it is captured (after eager warm-up steps), not while it replays
        self.capture_peak = (torch.cuda.max_memory_allocated(device) - before) if args.cuda_graph else 0
        self.first_step_seconds = None
        for i in range(args.warmup):  # compilation, autotuning and lazy state happen here, untimed
            self.step()
            if i == 0:
                if device.type == 'cuda':
                    torch.cuda.synchronize(device)
                self.first_step_seconds = time.perf_counter() - started
        self.resident = (torch.cuda.memory_allocated(device) - before) if device.type == 'cuda' else 0

    def measure(self, args: argparse.Namespace) -> tuple[float, int | None, float | None, float | None]:
        """(median seconds per step, peak bytes of this model's step: its resident memory plus what its steps
        allocate, other models' resident memory excluded, GPU-busy fraction, kernels launched a step)."""
        cuda = self.device.type == 'cuda'
        others = torch.cuda.memory_allocated(self.device) - self.resident if cuda else 0
        measured = time_step(self.step, self.device, warmup=1, repeats=args.repeats, calls=args.iters)
        if not cuda:
            return measured.median, None, None, None
        kernel_time, kernels = kernel_profile(self.step, self.device)
        peak = max(measured.peak_cuda_bytes - others, self.capture_peak)
        return measured.median, peak, kernel_time / measured.median, kernels


def compile_options(model: nn.Module, mode: str) -> dict:
    """``torch.compile`` arguments for ``model`` in ``mode``: a model with a VMamba backbone compiles as that backbone's
    own ``compile`` option does (:func:`compile_arguments`: inductor without its layout optimization, recomputing
    views), any other with inductor as it is."""
    options = dict(mode=mode)
    return compile_arguments(options) if any(isinstance(m, VMamba) for m in model.modules()) else options


@dataclass
class CapturedStep:
    """A step captured in a CUDA graph, called to replay it. The graph reads and writes the memory of every tensor the
    step used (weights, gradients, optimizer state, inputs) but holds none of them: the step function, which does, is
    kept with it. Without it they were freed after the capture, and the next model built in the process took their
    memory while the graph still replayed into it (an illegal memory access in a later replay)."""
    graph: torch.cuda.CUDAGraph
    step: Callable[[], None]

    def __call__(self) -> None:
        self.graph.replay()


def capture(step: Callable[[], None], device: torch.device) -> CapturedStep:
    """``step`` captured in a CUDA graph after warm-up calls on a side stream."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return CapturedStep(graph, step)


def benchmark(label: str, model: nn.Module, size: tuple[int, int], batch: int, precision: str, mode: str,
              args: argparse.Namespace, reference: str | None = None) -> Result:
    """One setting of one model, built and measured once (the sweep's way)."""
    step = Step(model, size, batch, precision, mode, args)
    seconds, peak, busy, kernels = step.measure(args)
    return Result(label, step.params, size, batch, precision, mode, seconds, peak, reference, busy, kernels)


def run_safely(fn: Callable, label: str, *args, **kwargs):
    """``fn(*args, **kwargs)``; running out of memory is a result (printed, skipped), not the end of the run."""
    try:
        return fn(*args, **kwargs)
    except torch.cuda.OutOfMemoryError:
        print(f'{label}: out of memory, skipped')
        torch.cuda.empty_cache()
        return None


# --- printing -------------------------------------------------------------------------------------------------------

def results_table(results: list[Result], title: str) -> str:
    by_key = {(r.model, r.size, r.precision, r.mode): r for r in results}
    header = ['model', 'params', 'input', 'batch', 'prec', 'mode', 'img/s', 'ms/iter', 'peak GB', 'GPU busy',
              'kernels', 'spread', 'vs Swin']
    rows = []
    for r in sorted(results, key=lambda r: (r.mode, r.precision, r.size)):
        ref = by_key.get((r.reference, r.size, r.precision, r.mode)) if r.reference else None
        rows.append([r.model, f'{r.params / 1e6:.1f}M', f'{r.size[0]}x{r.size[1]}', str(r.batch), r.precision, r.mode,
                     f'{r.throughput:.1f}', f'{r.seconds * 1e3:.1f}',
                     '-' if r.peak_bytes is None else f'{r.peak_bytes / 2 ** 30:.2f}',
                     '-' if r.gpu_busy is None else f'{r.gpu_busy:.2f}',
                     '-' if r.kernels is None else f'{r.kernels:.0f}', f'{r.spread:.0%}',
                     f'{r.throughput / ref.throughput:.2f}x' if ref else '-'])
    return f'{title}\n{format_table(header, rows)}'


# --- runs -----------------------------------------------------------------------------------------------------------

def main_runs(args: argparse.Namespace) -> list[Result]:
    """Every model at every setting. Within a setting all models are built first, then measured in turns for
    ``args.rounds`` rounds; each result is the median over the rounds, with the rounds' spread."""
    # (label, build(size), reference, per_size): timm's Swin is built for its input size (window masks)
    entries = [(label, lambda size, b=build: b(), swin if args.compare else None, False)
               for label, build, swin in vmamba_models(args)]
    if args.compare:
        swins = sorted({entry[2] for entry in entries}, key=list(SWIN.values()).index)
        entries += [(name, lambda size, n=name: timm_model(n, img_size=size), name, True) for name in swins]
        entries.append((CONVNEXT, lambda size: timm_model(CONVNEXT), SWIN['tiny'], False))
    results = []
    models: dict[str, nn.Module] = {}
    for size in args.size:
        for label, build, _, per_size in entries:
            if per_size or label not in models:
                models[label] = build(size)
        for precision in args.precision:
            for mode in args.mode:
                setting = ((size, size), args.batch, precision, mode)
                steps = {label: run_safely(Step, label, models[label], *setting, args) for label, *_ in entries}
                for label, step in steps.items():
                    if step and step.first_step_seconds is not None:
                        print(f'{label} {size} {precision} {mode}: first step done {step.first_step_seconds:.2f} s '
                              'after its setup began', flush=True)
                rounds: dict[str, list[tuple]] = {label: [] for label, step in steps.items() if step}
                for r in range(args.rounds):
                    for label in rounds:
                        rounds[label].append(steps[label].measure(args))
                        seconds, _, busy, _ = rounds[label][-1]
                        print(f'{label} {size} {precision} {mode} round {r}: {args.batch / seconds:.1f} img/s'
                              + ('' if busy is None else f', GPU busy {busy:.2f}'), flush=True)
                for label, reference in ((e[0], e[2]) for e in entries):
                    if label in rounds:
                        results.append(round_result(label, steps[label].params, setting, rounds[label], reference))
                del steps
                if args.device.startswith('cuda'):
                    torch.cuda.empty_cache()
    return results


def round_result(label: str, params: int, setting: tuple, rounds: list[tuple], reference: str | None) -> Result:
    """The median over rounds of (seconds, peak, GPU-busy, kernels), and the rounds' spread (slowest over fastest
    - 1)."""
    seconds = [r[0] for r in rounds]
    peak = rounds[0][1]
    busy, kernels = (statistics.median(r[i] for r in rounds) if rounds[0][i] is not None else None for i in (2, 3))
    return Result(label, params, *setting, statistics.median(seconds), peak, reference, busy, kernels,
                  max(seconds) / min(seconds) - 1)


def det_runs(args: argparse.Namespace) -> list[Result]:
    """Backbones alone at detection size, forward + backward (no optimizer step: as a detector's backbone share)."""
    entries = [(f'{vmamba_label(a, args.arch_options)} backbone', lambda a=a: VMamba(a, **args.arch_options),
                f'{SWIN[size_of(a)]} backbone') for a in args.arch]
    if args.compare:
        for name in sorted({SWIN[size_of(a)] for a in args.arch}, key=list(SWIN.values()).index):
            entries.append((f'{name} backbone', lambda n=name: swin_backbone(n, args.det_size), f'{name} backbone'))
    results = []
    for label, build, reference in entries:
        model = build()
        for precision in args.precision:
            result = run_safely(backbone_step, label, label, model, precision, args,
                                reference if args.compare else None)
            results += [result] if result else []
        del model
    return results


def backbone_step(label: str, model: nn.Module, precision: str, args: argparse.Namespace,
                  reference: str | None) -> Result:
    device = torch.device(args.device)
    model = TensorModel(model).to(device).train()
    images = torch.randn(args.det_batch, 3, *args.det_size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == 'bf16')

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_of(model(images))
        loss.backward()

    timing = time_step(step, device, warmup=args.warmup, repeats=args.repeats, calls=args.iters)
    return Result(label, sum(p.numel() for p in model.parameters()), tuple(args.det_size), args.det_batch, precision,
                  'fwd+bwd', timing.median, timing.peak_cuda_bytes, reference)


def swin_backbone(name: str, size: tuple[int, int]) -> nn.Module:
    """Swin as a detection backbone: mmdet's SwinTransformer when mmdet is installed, else timm's features."""
    try:
        from mmdet.models.backbones import SwinTransformer
    except ImportError:
        return timm_model(name, features_only=True, img_size=tuple(size))
    return SwinTransformer(window_size=7, drop_path_rate=0.2, **MMDET_SWIN[name])


# --- resolution sweep -----------------------------------------------------------------------------------------------

def sweep(args: argparse.Namespace) -> list[Result]:
    """Throughput (inference, the first precision) and FLOPs at each size; writes the PNG."""
    from mmvmamba.utils.flops import count_flops

    baselines = [GLOBAL_ATTENTION, SWIN['tiny']] if args.baselines is None else [
        b for b in args.baselines if b.lower() != 'none']
    if baselines:
        try:
            import timm  # noqa: F401
        except ImportError:
            print('timm is not installed: the sweep shows VMamba alone')
            baselines = []
    # timm models are built for each size (their position embeddings and attention masks depend on it)
    entries = [(label, build, False) for label, build, _ in vmamba_models(args)]
    entries += [(name, lambda size, n=name: timm_model(n, img_size=size), True) for name in baselines]
    flops = {label: [] for label, _, _ in entries}
    speed = {label: [] for label, _, _ in entries}
    results = []
    for label, build, per_size in entries:
        model = None if per_size else build()
        for size in args.sweep_sizes:
            model = build(size) if per_size else model
            flops[label].append(count_flops(TensorModel(model), torch.randn(1, 3, size, size)).flops / 1e9)
            if not args.flops_only:
                result = run_safely(benchmark, label, label, model, (size, size), args.batch, args.precision[0],
                                    'infer', args)
                speed[label].append(result.throughput if result else math.nan)
                results += [result] if result else []
            print(f'{label} {size}: {flops[label][-1]:.2f} GFLOPs' +
                  ('' if args.flops_only else f', {speed[label][-1]:.1f} img/s'), flush=True)
        del model
    plot_sweep(args.sweep_sizes, flops, None if args.flops_only else speed, args.out,
               f'{args.device}, batch {args.batch}, {args.precision[0]}')
    print(f'sweep plot: {args.out}')
    return results


def plot_sweep(sizes: list[int], flops: dict[str, list[float]], speed: dict[str, list[float]] | None, path: str,
               setting: str) -> None:
    """FLOPs (and, given ``speed``, inference throughput) against input size; one line per model."""
    import os

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 if speed is None else 2, figsize=(4.5 if speed is None else 9, 3.6), squeeze=False)
    ax_flops = axes[0, 0]
    for label in flops:
        ax_flops.plot(sizes, flops[label], marker='o', label=label)
    ax_flops.set(xlabel='input size (square)', ylabel='GFLOPs', title='FLOPs (multiply-adds)')
    if speed is not None:
        ax_speed = axes[0, 1]
        for label in speed:
            ax_speed.plot(sizes, speed[label], marker='o', label=label)
        ax_speed.set(xlabel='input size (square)', ylabel='images / s', yscale='log', title=f'inference ({setting})')
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(f'device: {torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}, torch {torch.__version__}'
          f', {torch.get_num_threads()} CPU threads')
    if args.sweep:
        results = sweep(args)
        if results:
            print(results_table(results, 'Resolution sweep (inference)'))
        return results
    det = det_runs(args) if args.det else []
    results = main_runs(args)
    if det:
        print(results_table(det, f'Backbones at detection size ({args.det_batch}x3x{args.det_size[0]}x'
                                 f'{args.det_size[1]}), forward + backward'))
    print(results_table(results, 'Throughput (median of repeats, warm-up excluded)'))
    return det + results


if __name__ == '__main__':
    main()
