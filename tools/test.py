"""Test (and evaluate) a checkpoint of an mmvmamba (or any mmdet / mmseg / mmpretrain) config.

Modelled on mmdet's ``tools/test.py``. ``--aug-test`` wraps the model in the config's ``tta_model`` and runs the
test set through its ``tta_pipeline`` (UperNet: multi-scale + flip; Mask R-CNN: flip). The metrics are logged by
MMEngine and printed at the end as one JSON line: ``metrics: {...}``.
"""
from __future__ import annotations

import argparse
import json

from mmengine.config import Config, ConfigDict, DictAction
from mmengine.dist import is_main_process
from mmengine.evaluator import DumpResults
from mmengine.runner import Runner
from train import (
    build_runner,
    check_dataset_paths,
    check_runner_checkpoint,
    load_config,
    parse_launch_args,
    register_scope,
    run_under_load_policy,
    setup_distributed,
    teardown_distributed,
)

from mmvmamba.engine import load_checkpoint_file


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model (mmdet, mmseg or mmpretrain config)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics (default: ./work_dirs/CONFIG_NAME)')
    parser.add_argument('--aug-test', action='store_true',
                        help='test-time augmentation with the config\'s tta_model and tta_pipeline')
    parser.add_argument('--out', help='dump the predictions to this pickle file (.pkl)')
    parser.add_argument('--show-dir', help='save images painted with the predictions in this dir')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value pairs, e.g. test_dataloader.batch_size=2; lists as key="[a,b]", '
        'no white space')
    args = parse_launch_args(parser)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error('--out must be a .pkl or .pickle file')
    return args


def enable_tta(cfg: Config) -> None:
    """Wrap the model in ``cfg.tta_model`` and use ``cfg.tta_pipeline`` for the test set."""
    missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
    if missing:
        raise ValueError(f'--aug-test needs {" and ".join(missing)} in the config.')
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:  # dataset wrappers
        dataset = dataset.dataset
    dataset.pipeline = cfg.tta_pipeline
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)


def enable_visualization(cfg: Config, scope: str, show_dir: str) -> None:
    """Turn on the codebase's visualization hook: every test image, painted, saved under ``show_dir``."""
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise ValueError('--show-dir needs a visualization hook in default_hooks.')
    hook.interval = 1
    if scope == 'mmdet':
        hook.draw = True
        hook.test_out_dir = show_dir
    elif scope == 'mmseg':
        hook.draw = True
        cfg.visualizer.save_dir = show_dir
    else:
        hook.enable = True
        hook.out_dir = show_dir


def add_dump_metric(runner: Runner, scope: str, out: str) -> None:
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults  # masks as RLE, as mmdet's tools/test.py writes them
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=out))
    else:
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=out))


def run_test(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    cfg.load_from = args.checkpoint
    check_dataset_paths(cfg, args.config, ['test_dataloader'], ['test_evaluator'])
    source = 'the checkpoint to test'
    checkpoint = load_checkpoint_file(args.checkpoint, source=source, mmap=True)
    scope = register_scope(cfg)
    setup_distributed(cfg)
    if args.show_dir:
        if args.aug_test and scope == 'mmpretrain':
            raise ValueError('mmpretrain\'s VisualizationHook cannot draw test-time augmented batches: use --show-dir '
                             'without --aug-test.')
        enable_visualization(cfg, scope, args.show_dir)
    if args.aug_test:
        enable_tta(cfg)

    runner = build_runner(cfg)
    check_runner_checkpoint(runner, checkpoint, args.checkpoint, source, args.config, strict=True)
    del checkpoint
    if args.out is not None:
        add_dump_metric(runner, scope, args.out)
    metrics = runner.test()
    if is_main_process():
        print('metrics: ' + json.dumps(metrics, default=float), flush=True)
    teardown_distributed()


def main() -> None:
    run_under_load_policy(parse_args(), run_test)


if __name__ == '__main__':
    main()
