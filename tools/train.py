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
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmvmamba.engine import (
    AtomicCheckpointHook,
    RandomStateHook,
    allow_unsafe_load,
    load_checkpoint_file,
    newest_intact_checkpoint,
    read_training_checkpoint,
)
from mmvmamba.engine.amp import setup_amp
from mmvmamba.engine.grad_strides import align_grad_strides
from mmvmamba.engine.model_match import check_checkpoint_matches
from mmvmamba.engine.safe_load import UNSAFE_LOAD_FLAG
from mmvmamba.utils.config import load_config as read_config

# default_scope -> module whose register_all_modules() registers that codebase
SCOPES = {'mmdet': 'mmdet.utils', 'mmseg': 'mmseg.utils', 'mmpretrain': 'mmpretrain.utils'}


def force_weights_only_loads(unsafe: bool) -> None:
    """Make every ``torch.load`` of the process (and of its workers) use ``weights_only=True``, also in code that asks
    for less; ``unsafe`` (``--unsafe-load``) lifts it. MMEngine's own types are allowed while a checkpoint is read
    (:mod:`mmvmamba.engine.safe_load`)."""
    os.environ.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    if unsafe:
        os.environ.pop('TORCH_FORCE_WEIGHTS_ONLY_LOAD', None)
    else:
        os.environ['TORCH_FORCE_WEIGHTS_ONLY_LOAD'] = '1'


def add_unsafe_load_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(UNSAFE_LOAD_FLAG, action='store_true',
                        help='read checkpoints with weights_only=False: RUNS ANY CODE IN THE FILES. Only for trusted '
                        'files that hold other objects than weights (e.g. written by old versions of these tools)')


def parse_launch_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Add the options the train and test tools share (--unsafe-load, --launcher, --local-rank), parse, and export
    LOCAL_RANK."""
    add_unsafe_load_option(parser)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torchrun sets LOCAL_RANK instead)
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


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
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the VMamba backbone (model.backbone.compile=True): the first iterations '
                        'compile, about a minute per new input size on a GPU; the rest of the model stays eager')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint, or with no path from the latest checkpoint in the work dir')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value pairs, e.g. model.backbone.init_cfg=None '
        'train_dataloader.batch_size=4; lists as key="[a,b]", nested as key="[(a,b),(c,d)]", no white space')
    return parse_launch_args(parser)


def load_config(path: str, cfg_options: dict | None, work_dir: str | None, launcher: str) -> Config:
    """Read the config, apply --cfg-options and the work dir (CLI > config > ./work_dirs/CONFIG_NAME)."""
    cfg = read_config(path, cfg_options)
    cfg.launcher = launcher
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


def _datasets(node: dict) -> Iterator[dict]:
    """The leaf data sets of a dataset config (through wrappers such as RepeatDataset and ConcatDataset)."""
    if 'dataset' in node:
        yield from _datasets(node['dataset'])
    elif 'datasets' in node:
        for child in node['datasets']:
            yield from _datasets(child)
    else:
        yield node


def _dataset_paths(dataset: dict) -> Iterator[tuple[str, str]]:
    """(config field, path) of the folders and files a data set config names, relative paths joined to data_root."""
    root = dataset.get('data_root') or ''
    if root:
        yield 'data_root', root
    if dataset.get('ann_file'):
        yield 'ann_file', osp.join(root, dataset['ann_file'])
    prefix = dataset.get('data_prefix') or {}
    for key, folder in (prefix.items() if isinstance(prefix, dict) else [('', prefix)]):
        if isinstance(folder, str) and folder:
            yield f'data_prefix.{key}' if key else 'data_prefix', osp.join(root, folder)


def check_dataset_paths(cfg: Config, config_path: str, loaders: Sequence[str], evaluators: Sequence[str]) -> None:
    """Raise before anything is built when a data set folder or annotation file the config names does not exist; for
    the demo's data, say the command that writes it."""
    paths = [(f'{loader}.dataset.{field}', path) for loader in loaders if cfg.get(loader)
             for dataset in _datasets(cfg[loader]['dataset']) for field, path in _dataset_paths(dataset)]
    for evaluator in evaluators:
        metrics = cfg.get(evaluator)
        for metric in metrics if isinstance(metrics, list) else [metrics]:
            if isinstance(metric, dict) and metric.get('ann_file'):
                paths.append((f'{evaluator}.ann_file', metric['ann_file']))
    for field, path in paths:
        if osp.exists(path):
            continue
        if 'data/demo' in osp.normpath(path).replace(osp.sep, '/'):
            fix = ('The demo data is synthetic and written by a tool: run `python tools/make_demo_data.py` (it writes '
                   'data/demo), then run this command again.')
        else:
            fix = (f'See docs/data_preparation.md for where the data goes, or point the config at your copy with '
                   f'--cfg-options {field}=PATH.')
        raise FileNotFoundError(f'The data set of {config_path} is missing: {field} = {path!r} does not exist. {fix}')


def add_run_safety_hooks(cfg: Config) -> None:
    """Atomic checkpoints (:class:`AtomicCheckpointHook` in place of MMEngine's ``CheckpointHook``) and random states
    saved with them (:class:`RandomStateHook`), so that a killed run resumes exactly."""
    hooks = cfg.get('default_hooks') or ConfigDict()
    if 'checkpoint' not in hooks:  # MMEngine's default hook, atomic
        hooks.checkpoint = ConfigDict(type=AtomicCheckpointHook.__name__, interval=1)
    elif hooks.checkpoint is not None and hooks.checkpoint.get('type') == 'CheckpointHook':
        hooks.checkpoint.type = AtomicCheckpointHook.__name__
    cfg.default_hooks = hooks
    custom = list(cfg.get('custom_hooks') or [])
    if not any(hook.get('type') == RandomStateHook.__name__ for hook in custom):
        custom.append(dict(type=RandomStateHook.__name__))
    cfg.custom_hooks = custom


def resolve_checkpoint(cfg: Config, resume: str | None) -> tuple[str | None, dict | None, str]:
    """Set ``cfg.resume`` / ``cfg.load_from`` from ``--resume`` and read the checkpoint that will be loaded (tensors
    mapped, nothing run): returns its path, its contents and where it came from.

    ``--resume`` alone takes the newest intact checkpoint of the work dir, skipping (and naming) unreadable ones.
    """
    if resume == 'auto':
        path = newest_intact_checkpoint(cfg.work_dir)
        if path is None:
            print_log(f'--resume: no checkpoint in {cfg.work_dir}, training from the start', logger='current')
        cfg.resume, cfg.load_from = path is not None, path
        source = '--resume'
    elif resume is not None:
        cfg.resume, cfg.load_from = True, resume
        path, source = resume, '--resume'
    else:
        path, source = cfg.get('load_from'), 'load_from'
    if path is None:
        return None, None, source
    if cfg.resume:
        return path, read_training_checkpoint(path, source), source
    return path, load_checkpoint_file(path, source=source, mmap=True), source


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


def compile_backbone(cfg: Config) -> None:
    """``--compile``: the config's VMamba backbone compiles its forward (see ``VMamba``'s ``compile``)."""
    backbone = cfg.model.get('backbone')
    if not isinstance(backbone, dict) or backbone.get('type') != 'VMamba':
        found = backbone.get('type') if isinstance(backbone, dict) else backbone
        raise ValueError(f'--compile compiles a VMamba backbone; this config\'s model.backbone is {found!r}. Use '
                         f'MMEngine\'s own switch for other models: --cfg-options compile=True.')
    backbone.setdefault('compile', True)


def check_runner_checkpoint(runner: Runner, checkpoint: dict | None, path: str | None, source: str, config: str,
                            strict: bool) -> None:
    """Refuse, before any work, a checkpoint that is not for the runner's model (see ``check_checkpoint_matches``)."""
    if checkpoint is not None:
        check_checkpoint_matches(runner.model, checkpoint, path, source, config, strict)


def run_training(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    check_dataset_paths(cfg, args.config, ['train_dataloader'] + (['val_dataloader'] if cfg.get('val_cfg') else []),
                        ['val_evaluator'] if cfg.get('val_cfg') else [])
    path, checkpoint, source = resolve_checkpoint(cfg, args.resume)
    register_scope(cfg)
    setup_distributed(cfg)
    setup_amp(cfg, args.amp)
    if args.compile:
        compile_backbone(cfg)
    add_run_safety_hooks(cfg)

    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError('--auto-scale-lr needs auto_scale_lr = dict(base_batch_size=...) in the config.')
        cfg.auto_scale_lr.enable = True

    runner = build_runner(cfg)
    check_runner_checkpoint(runner, checkpoint, path, source, args.config, strict=cfg.resume)
    del checkpoint
    if is_model_wrapper(runner.model):  # DDP: gradients in the layout of its buckets
        align_grad_strides(runner.model)
    runner.train()
    teardown_distributed()


def run_under_load_policy(args: argparse.Namespace, run: Callable[[argparse.Namespace], None]) -> None:
    """``run(args)`` with every checkpoint read weights-only, unless ``--unsafe-load`` (the train and test tools)."""
    force_weights_only_loads(args.unsafe_load)
    with allow_unsafe_load(args.unsafe_load):
        run(args)


def main() -> None:
    run_under_load_policy(parse_args(), run_training)


if __name__ == '__main__':
    main()
