"""Time full training steps (data preprocessor, forward, loss, backward, optimizer step) of a config's model.

The model of each config is built with pretrained weights disabled and trained on random data of the given size
through ``model.train_step`` and the config's own optim wrapper (AdamW with its param groups), which is exactly what
MMEngine's runner does per iteration. After ``--warmup`` steps, ``--steps`` steps are timed one by one (CUDA events
on GPU, a wall clock on CPU) and the median is reported with the peak memory. ``--compare`` runs a second config in
the same process (e.g. ``configs/baselines/mask_rcnn_swin_t_1x.py``) and prints the ratios.

Example (one H100): PYTHONPATH=. python tools/analysis/benchmark_train_step.py configs/mask_rcnn_vmamba_t_1x.py \
    --compare configs/baselines/mask_rcnn_swin_t_1x.py --batch 2 --size 800 1216
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from mmengine.config import DictAction
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.registry import init_default_scope

from mmvmamba.engine.amp import setup_amp
from mmvmamba.utils.cli import default_device
from mmvmamba.utils.config import build_from_config, load_config
from mmvmamba.utils.timing import peak_rss_bytes, time_step


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Time training steps of the model of a config on random data')
    parser.add_argument('config', help='config file')
    parser.add_argument('--compare', help='a second config timed the same way in the same process')
    parser.add_argument('--amp', nargs='?', const='default', choices=['default', 'fp16', 'bf16'],
                        help='mixed precision as in tools/train.py --amp')
    parser.add_argument('--steps', type=int, default=10, help='timed steps (default: 10)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps first (default: 3)')
    parser.add_argument('--batch', type=int, default=2, help='images per step (default: 2)')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help='image size (default: 800 1216 for mmdet, 512 512 for mmseg, 224 224 for mmpretrain)')
    parser.add_argument('--boxes', type=int, default=8, help='random objects per image for detection (default: 8)')
    parser.add_argument('--device', default=default_device(), help='cuda or cpu (default: cuda when available)')
    parser.add_argument('--json', help='also write the results to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override settings of both configs')
    return parser.parse_args()


DEFAULT_SIZES = {'mmdet': (800, 1216), 'mmseg': (512, 512), 'mmpretrain': (224, 224)}


def random_batch(scope: str, model: torch.nn.Module, batch: int, size: tuple[int, int], boxes: int) -> dict:
    """Random images and annotations in the packed format that the codebase's data pipeline produces."""
    height, width = size
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
              for _ in range(batch)]
    if scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        num_classes = model.roi_head.bbox_head.num_classes if hasattr(model, 'roi_head') else 80
        return demo_mm_inputs(batch_size=batch, image_shapes=(3, height, width), num_items=[boxes] * batch,
                              num_classes=num_classes, with_mask=True)
    if scope == 'mmseg':
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        samples = []
        for _ in range(batch):
            sample = SegDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size))
            labels = torch.randint(0, model.decode_head.num_classes, (1, height, width), generator=generator)
            sample.gt_sem_seg = PixelData(data=labels)
            samples.append(sample)
        return dict(inputs=images, data_samples=samples)
    from mmpretrain.structures import DataSample
    num_classes = model.head.num_classes
    samples = [DataSample(metainfo=dict(img_shape=size)).set_gt_label(int(torch.randint(num_classes, (1,))))
               for _ in range(batch)]
    return dict(inputs=images, data_samples=samples)


@dataclass
class TrainingStep:
    """A config's model on its device with the config's optim wrapper and one random batch."""

    scope: str
    model: nn.Module
    optim_wrapper: OptimWrapper
    data: dict
    size: tuple[int, int]

    def run(self) -> dict:
        """One training step, as MMEngine's runner takes it: ``model.train_step``; returns the losses."""
        return self.model.train_step(self.data, self.optim_wrapper)


def prepare_training_step(path: str, args: argparse.Namespace, device: torch.device) -> TrainingStep:
    """Build the model (pretrained weights off) and optim wrapper of ``path`` on ``device`` and a random batch of
    ``args.batch`` images of ``args.size`` (the scope's default size when None) with ``args.boxes`` objects each."""
    cfg = load_config(path, args.cfg_options)
    setup_amp(cfg, args.amp)
    scope = cfg.default_scope
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    init_default_scope(scope)
    model = build_from_config(cfg)
    model.init_weights()
    model = model.to(device)
    model.train()  # not chained: mmdet's SwinTransformer.train() returns None
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    size = tuple(args.size) if args.size else DEFAULT_SIZES[scope]
    return TrainingStep(scope, model, optim_wrapper, random_batch(scope, model, args.batch, size, args.boxes), size)


def benchmark(path: str, args: argparse.Namespace) -> dict:
    """Build the model and optim wrapper of ``path`` and time ``args.steps`` training steps."""
    device = torch.device(args.device)
    step = prepare_training_step(path, args, device)
    scope, size = step.scope, step.size
    params = sum(p.numel() for p in step.model.parameters())

    timing = time_step(step.run, device, warmup=args.warmup, repeats=args.steps)
    cuda = device.type == 'cuda'
    return dict(config=path, scope=scope, device=str(device), batch=args.batch, size=list(size), amp=args.amp,
                params_m=params / 1e6, median_s=timing.median, min_s=timing.min, mean_s=timing.mean,
                steps=len(timing.seconds),
                peak_memory_gb=(timing.peak_cuda_bytes if cuda else peak_rss_bytes()) / 2 ** 30,
                memory_kind='cuda max_memory_allocated' if cuda else 'process max RSS',
                last_losses={k: float(v.detach()) for k, v in timing.output.items()})


def report(results: list[dict]) -> None:
    for r in results:
        print(f'{r["config"]}: {r["params_m"]:.1f}M params, {r["batch"]} x {r["size"][0]}x{r["size"][1]} on '
              f'{r["device"]} (amp={r["amp"]}): median {r["median_s"]:.4f} s/step (min {r["min_s"]:.4f}, mean '
              f'{r["mean_s"]:.4f}, {r["steps"]} steps), peak memory {r["peak_memory_gb"]:.2f} GB '
              f'({r["memory_kind"]}), losses {json.dumps(r["last_losses"])}')
    if len(results) == 2:
        a, b = results
        print(f'ratio {Path(a["config"]).stem} / {Path(b["config"]).stem}: time x{a["median_s"] / b["median_s"]:.2f}, '
              f'memory x{a["peak_memory_gb"] / b["peak_memory_gb"]:.2f}')


def main() -> None:
    args = parse_args()
    MMLogger.get_instance('benchmark_train_step', log_level='WARNING')  # no per-parameter init and optimizer logs
    results = []
    for path in [args.config] + ([args.compare] if args.compare else []):
        results.append(benchmark(path, args))
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == '__main__':
    main()
