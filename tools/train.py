"""Train a detector, segmentor or classifier from an mmvmamba (or any mmdet / mmseg / mmpretrain) config.

Modelled on mmdet's ``tools/train.py``. The config's ``default_scope`` picks the codebase whose modules are
registered. Multi-process runs without CUDA (``tools/dist_train.sh CONFIG N`` on a CPU machine) use gloo: this tool
starts the process group itself and wraps the model in DDP without ``device_ids``, where MMEngine assumes GPUs.

The helpers here are shared with ``tools/test.py``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import os.path as osp
import subprocess

import torch
import torch.distributed as dist
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmvmamba.utils.amp import setup_amp

# default_scope -> module whose register_all_modules() registers that codebase
SCOPES = {'mmdet': 'mmdet.utils', 'mmseg': 'mmseg.utils', 'mmpretrain': 'mmpretrain.utils'}


def allow_mmengine_checkpoints() -> None:
    """Let MMEngine load its own checkpoints (``--resume``, ``load_from``, the checkpoint under test).

    They hold the message hub's numpy buffers, which torch >= 2.6 refuses under its ``weights_only=True`` default;
    MMEngine 0.10 does not pass ``weights_only``. Loads that ask for ``weights_only=True`` explicitly, like the VMamba
    pretrained-weights loader, stay restricted. Load only checkpoints you trust.
    """
    os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model (mmdet, mmseg or mmpretrain config)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models (default: ./work_dirs/CONFIG_NAME)')
    parser.add_argument(
        '--amp', nargs='?', const='default', choices=['default', 'fp16', 'bf16'],
        help='automatic mixed precision: --amp alone is MMEngine\'s default AMP (float16 autocast with dynamic loss '
        'scaling) on CUDA and bfloat16 autocast on CPU (segmentors and classifiers); --amp bf16 / fp16 picks the dtype')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by the total batch size over auto_scale_lr.base_batch_size')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint, or with no path from the latest checkpoint in the work dir')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value pairs, e.g. model.backbone.init_cfg=None '
        'train_dataloader.batch_size=4; lists as key="[a,b]", nested as key="[(a,b),(c,d)]", no white space')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torchrun sets LOCAL_RANK instead)
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(path: str, cfg_options: dict | None, work_dir: str | None, launcher: str) -> Config:
    """Read the config, apply --cfg-options and the work dir (CLI > config > ./work_dirs/CONFIG_NAME)."""
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


def register_scope(cfg: Config) -> str:
    """Register every module of the codebase named by ``cfg.default_scope``; returns the scope."""
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'default_scope must be one of {sorted(SCOPES)}, got {scope!r}: set it in the config.')
    importlib.import_module(SCOPES[scope]).register_all_modules(init_default_scope=False)
    return scope


def _slurm_to_torch_env() -> None:
    """Translate SLURM's task variables into the env:// variables of torch.distributed."""
    os.environ.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in os.environ:
        nodes = os.environ['SLURM_NODELIST']
        os.environ['MASTER_ADDR'] = subprocess.getoutput(f'scontrol show hostname {nodes} | head -n1')
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')


def _sync_bn_to_bn(node: object) -> None:
    """Replace type='SyncBN' by 'BN' in a config subtree (torch's SyncBatchNorm runs on GPUs only)."""
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _sync_bn_to_bn(value)


def setup_distributed(cfg: Config) -> None:
    """Prepare a multi-process run. With CUDA, MMEngine's own launcher code does it all.

    Without CUDA: start a gloo process group (MMEngine's launcher calls ``torch.cuda.set_device``), wrap the model in
    DDP without ``device_ids`` and turn SyncBN into per-process BN.
    """
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    if cfg.launcher == 'slurm':
        _slurm_to_torch_env()
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    wrapper = ConfigDict(cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', find_unused_parameters=cfg.get('find_unused_parameters', False)))
    wrapper.device_ids = None
    cfg.model_wrapper_cfg = wrapper
    _sync_bn_to_bn(cfg.model)
    print_log(f'No CUDA: rank {dist.get_rank()} of {dist.get_world_size()} runs on CPU with gloo '
              f'(SyncBN -> BN per process).', logger='current')


def teardown_distributed() -> None:
    """Destroy the process group at the end of a multi-process run, once every rank has reached this point: left to
    interpreter exit, or closed by one rank while another still finishes (rank 0 evaluating, printing), its threads
    can abort the process after the work is done ('terminate called without an active exception', seen with gloo)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def build_runner(cfg: Config) -> Runner:
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


def main() -> None:
    args = parse_args()
    allow_mmengine_checkpoints()
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    register_scope(cfg)
    setup_distributed(cfg)
    setup_amp(cfg, args.amp)

    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError('--auto-scale-lr needs auto_scale_lr = dict(base_batch_size=...) in the config.')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    build_runner(cfg).train()
    teardown_distributed()


if __name__ == '__main__':
    main()
