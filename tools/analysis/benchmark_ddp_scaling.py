"""Data-parallel scaling of a config's training step: images per second of N processes (DDP, one per GPU) against one
process, both measured in one call.

Each run starts its processes with ``torch.multiprocessing`` (NCCL on CUDA, one GPU per process; gloo on CPU). Every
process builds the config's model and a random batch as ``benchmark_train_step.py`` does (pretrained weights off,
``--batch`` images of ``--size`` per process, the config's optim wrapper) and times ``model.train_step`` after
``--warmup`` steps. The one-process run trains the plain model; the N-process run wraps it in MMEngine's
``MMDistributedDataParallel`` as the runner does, with the gradient stride alignment of ``tools/train.py``
(``--no-grad-stride-alignment`` leaves it out, to measure what DDP's stride warning costs).

Images per second of a run = processes x ``--batch`` / the median step time of its slowest process. Scaling
efficiency = images per second of N / (N x images per second of one); the target on one host is 0.9 or more.
SyncBN layers run as BatchNorm here (``build_from_config``). On CPU every process of both runs gets
``cpu_count // N`` threads, so that both runs use the same cores per process.

Example (8 GPUs): python tools/analysis/benchmark_ddp_scaling.py configs/mask_rcnn_vmamba_t_1x.py --gpus 8 \
    --batch 2 --size 800 1216
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from benchmark_train_step import prepare_training_step
from mmengine.config import DictAction
from mmengine.logging import MMLogger
from mmengine.model import MMDistributedDataParallel

from mmvmamba.engine.grad_strides import align_grad_strides
from mmvmamba.utils.cli import default_device
from mmvmamba.utils.timing import time_step

STRIDE_WARNING = 'Grad strides do not match bucket view strides'


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Images per second of N data-parallel processes against one')
    parser.add_argument('config', help='config file')
    parser.add_argument('--gpus', type=int, required=True, help='processes of the data-parallel run (one per GPU)')
    parser.add_argument('--batch', type=int, default=2, help='images per process and step (default: 2)')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help='image size (default: 800 1216 for mmdet, 512 512 for mmseg, 224 224 for mmpretrain)')
    parser.add_argument('--boxes', type=int, default=8, help='random objects per image for detection (default: 8)')
    parser.add_argument('--steps', type=int, default=20, help='timed steps (default: 20)')
    parser.add_argument('--warmup', type=int, default=5, help='untimed steps first (default: 5)')
    parser.add_argument('--amp', nargs='?', const='default', choices=['default', 'fp16', 'bf16'],
                        help='mixed precision as in tools/train.py --amp')
    parser.add_argument('--device', choices=['cuda', 'cpu'], default=default_device(),
                        help='cuda (NCCL) or cpu (gloo); default: cuda when available')
    parser.add_argument('--no-grad-stride-alignment', action='store_true',
                        help="leave DDP's gradients as they come (see mmvmamba/engine/grad_strides.py)")
    parser.add_argument('--json', help='also write the results to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override settings of the config')
    args = parser.parse_args()
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    if args.gpus < 2:
        raise SystemExit(f'--gpus must be 2 or more (the processes compared with one), got {args.gpus}.')
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        raise SystemExit(f'--batch and --steps must be 1 or more and --warmup 0 or more; got --batch {args.batch}, '
                         f'--steps {args.steps}, --warmup {args.warmup}.')
    if args.device == 'cuda':
        if not torch.cuda.is_available():
            raise SystemExit('--device cuda: CUDA is not available here; use --device cpu (gloo).')
        if torch.cuda.device_count() < args.gpus:
            raise SystemExit(f'--gpus {args.gpus} needs {args.gpus} GPUs, this machine has '
                             f'{torch.cuda.device_count()}; pass --gpus {torch.cuda.device_count()} or fewer.')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def worker(rank: int, processes: int, port: int, args: argparse.Namespace, out: str) -> None:
    """One process of a run: build the step, wrap the model in DDP when there are several processes, time the step;
    rank 0 writes every rank's timing to ``out``."""
    MMLogger.get_instance('benchmark_ddp_scaling', log_level='WARNING')
    cuda = args.device == 'cuda'
    if cuda:
        torch.cuda.set_device(rank)
        device = torch.device('cuda', rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.gpus))
        device = torch.device('cpu')
    if processes > 1:
        os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), LOCAL_RANK=str(rank))
        dist.init_process_group('nccl' if cuda else 'gloo', rank=rank, world_size=processes)
    step = prepare_training_step(args.config, args, device)
    if processes > 1:
        step.model = MMDistributedDataParallel(module=step.model, device_ids=[rank] if cuda else None,
                                               broadcast_buffers=False, find_unused_parameters=False)
        if not args.no_grad_stride_alignment:
            align_grad_strides(step.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        timing = time_step(step.run, device, warmup=args.warmup, repeats=args.steps)
    stride_warnings = sum(STRIDE_WARNING in str(w.message) for w in caught)
    mine = dict(median_s=timing.median, size=list(step.size), stride_warnings=stride_warnings,
                losses={k: float(v.detach()) for k, v in timing.output.items()})
    if processes > 1:
        ranks = [None] * processes
        dist.all_gather_object(ranks, mine)
        dist.destroy_process_group()
    else:
        ranks = [mine]
    if rank == 0:
        Path(out).write_text(json.dumps(ranks))


def run(processes: int, args: argparse.Namespace) -> dict:
    """Time ``processes`` processes training together; the slowest one's median step gives the images per second."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'ranks.json')
        mp.spawn(worker, args=(processes, free_port(), args, out), nprocs=processes, join=True)
        ranks = json.loads(Path(out).read_text())
    slowest = max(r['median_s'] for r in ranks)
    return dict(processes=processes, median_s=[r['median_s'] for r in ranks],
                images_per_s=processes * args.batch / slowest,
                stride_warnings=sum(r['stride_warnings'] for r in ranks), size=ranks[0]['size'],
                losses=ranks[0]['losses'])


def main() -> None:
    args = parse_args()
    single, parallel = run(1, args), run(args.gpus, args)
    speedup = parallel['images_per_s'] / single['images_per_s']
    device = torch.cuda.get_device_name(0) if args.device == 'cuda' else f'CPU, {os.cpu_count()} cores'
    result = dict(config=args.config, device=args.device, device_name=device, batch_per_process=args.batch,
                  size=single['size'], amp=args.amp, grad_stride_alignment=not args.no_grad_stride_alignment,
                  runs=[single, parallel], speedup=speedup, efficiency=speedup / args.gpus)
    for r in (single, parallel):
        print(f'{r["processes"]} process(es) on {device}: {r["images_per_s"]:.2f} images/s '
              f'({args.batch} per process, median s/step of each process '
              f'{", ".join(f"{s:.4f}" for s in r["median_s"])}), DDP stride warnings: {r["stride_warnings"]}')
    print(f'scaling {args.config}: x{speedup:.2f} on {args.gpus} processes = {result["efficiency"]:.2f} N '
          f'(target >= 0.90 N on one host)')
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == '__main__':
    main()
