"""tools/dist_train.sh and tools/dist_test.sh end to end on the demo data: 1 and 2 processes (gloo on CPU), TTA,
resuming a killed run, mixed precision. Runs are a few iterations long; the tests check plumbing, not accuracy."""
from __future__ import annotations

import importlib
import json
import math
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mmvmamba.engine import amp, load_checkpoint_file
from tests.conftest import DEMO_NUM_VAL

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {'mask_rcnn': 'configs/demo/mask_rcnn_vmamba_demo.py', 'upernet': 'configs/demo/upernet_vmamba_demo.py'}
METRICS = {'mask_rcnn': ('coco/bbox_mAP', 'coco/segm_mAP'), 'upernet': ('mIoU', 'aAcc')}


def demo_options(task: str, data: Path, iters: int, checkpoint_interval: int | None = None) -> list[str]:
    """--cfg-options for a short demo run on the data in ``data``, logging every iteration."""
    if task == 'mask_rcnn':
        root, ann = f'{data}/coco/', f'{data}/coco/annotations/instances_val2017.json'
        options = [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'test')]
        options.append(f'test_evaluator.ann_file={ann}')
    else:
        root = f'{data}/ade/ADEChallengeData2016'
        options = [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'test')]
    checkpoint_interval = checkpoint_interval or iters
    return options + [f'train_cfg.max_iters={iters}', 'default_hooks.logger.interval=1',
                      f'default_hooks.checkpoint.interval={checkpoint_interval}']


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def tool_env(**overrides: str) -> dict[str, str]:
    """The tools on CPU, one thread per process, a free port for torchrun; ``overrides`` set more variables."""
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()), CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1')
    return env | overrides


def run(args: list[str], timeout: int = 300, succeeds: bool = True, cwd: Path = ROOT,
        env: dict[str, str] | None = None) -> str:
    """Run a tool, return its stdout and stderr; assert that it succeeds (``succeeds=False``: that it fails).
    ``env``: the environment (default :func:`tool_env`)."""
    result = subprocess.run(args, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout,
                            check=False)
    output = result.stdout + result.stderr
    assert (result.returncode == 0) == succeeds, f'{" ".join(args)} exited {result.returncode}:\n{output[-6000:]}'
    return output


def parse_metrics(output: str) -> dict[str, float]:
    lines = [line for line in output.splitlines() if line.startswith('metrics: ')]
    assert lines, f'no metrics line in the output:\n{output[-3000:]}'
    return json.loads(lines[-1][len('metrics: '):])


def train_losses(output: str) -> list[float]:
    return [float(v) for v in re.findall(r'Iter\(train\) \[ *\d+/\d+\].*?\sloss: (\S+)', output)]


@pytest.mark.parametrize('procs', [1, 2])
@pytest.mark.parametrize('task', ['mask_rcnn', 'upernet'])
def test_dist_train_then_test(task, procs, demo_data, tmp_path):
    """Train 2 iterations with dist_train.sh, test the saved checkpoint with dist_test.sh (2 processes: with TTA) and
    parse the metrics. DDP (2 processes) gets every gradient in its bucket layout: no gradient stride warning."""
    config, work = CONFIGS[task], tmp_path / 'work'
    options = demo_options(task, demo_data, iters=2)
    log = run(['bash', 'tools/dist_train.sh', config, str(procs), '--work-dir', str(work), '--cfg-options', *options])
    losses = train_losses(log)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    if procs > 1:
        assert 'rank 0 of 2 runs on CPU with gloo' in log and 'Distributed training: True' in log
        assert 'Grad strides do not match bucket view strides' not in log
    checkpoint = work / 'iter_2.pth'
    assert (work / 'last_checkpoint').read_text().strip() == str(checkpoint)
    # 1 process: also dump the predictions and paint the test images; 2 processes: test-time augmentation
    extra = ['--aug-test'] if procs > 1 else ['--out', str(tmp_path / 'out.pkl'), '--show-dir', str(tmp_path / 'show')]
    output = run(['bash', 'tools/dist_test.sh', config, str(checkpoint), str(procs), '--work-dir',
                  str(tmp_path / 'test'), *extra, '--cfg-options', *options])
    assert f'Load checkpoint from {checkpoint}' in output
    metrics = parse_metrics(output)
    for key in METRICS[task]:
        assert 0 <= metrics[key] <= (1 if task == 'mask_rcnn' else 100), (key, metrics)
    if procs == 1:
        assert len(pickle.loads((tmp_path / 'out.pkl').read_bytes())) == DEMO_NUM_VAL
        painted = [p for p in (tmp_path / 'show').rglob('*') if p.suffix in ('.jpg', '.png')]
        assert len(painted) == DEMO_NUM_VAL


def test_classifier_train_and_test(tmp_path):
    """The ImageNet config family (shallower backbone, 2 classes) on a tiny folder data set: train, test with TTA."""
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for label in ('plain', 'red'):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(4):
                image = rng.integers(0, 256, (64, 72, 3), dtype=np.uint8)
                image[..., 2] = 255 if label == 'red' else image[..., 2]
                cv2.imwrite(str(tmp_path / split / label / f'{i}.jpg'), image)
    config = tmp_path / 'classifier.py'
    loader = ("dict(batch_size=4, num_workers=0, persistent_workers=False, dataset=dict(_delete_=True, "
              "type='CustomDataset', data_root='{root}', pipeline={{{{_base_.{pipeline}}}}}))")
    config.write_text('\n'.join([
        f"_base_ = ['{ROOT}/configs/vmamba_t_8xb128_in1k.py']",
        "model = dict(backbone=dict(depths=(1, 1, 1, 1)), head=dict(num_classes=2))",
        "data_preprocessor = dict(num_classes=2)",
        'train_dataloader = ' + loader.format(root=tmp_path / 'train', pipeline='train_pipeline'),
        'val_dataloader = ' + loader.format(root=tmp_path / 'val', pipeline='test_pipeline'),
        'test_dataloader = val_dataloader',
        'val_evaluator = dict(topk=(1,))',
        'test_evaluator = val_evaluator',
        'train_cfg = dict(max_epochs=1)',
        'default_hooks = dict(logger=dict(interval=1))',
    ]))
    work = tmp_path / 'work'
    log = run(['bash', 'tools/dist_train.sh', str(config), '1', '--work-dir', str(work)])
    losses = [float(v) for v in re.findall(r'Epoch\(train\) +\[1\]\[[12]/2\].*?\sloss: (\S+)', log)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    output = run(['bash', 'tools/dist_test.sh', str(config), str(work / 'epoch_1.pth'), '1', '--work-dir',
                  str(tmp_path / 'test'), '--aug-test'])
    assert 0 <= parse_metrics(output)['accuracy/top1'] <= 100


def test_resume_after_kill(demo_data, tmp_path):
    """Kill a training run after its first checkpoint, resume it with --resume and let it finish."""
    config, work, iters = CONFIGS['upernet'], tmp_path / 'work', 6
    args = ['bash', 'tools/dist_train.sh', config, '1', '--work-dir', str(work), '--cfg-options',
            *demo_options('upernet', demo_data, iters=iters, checkpoint_interval=2)]
    process = subprocess.Popen(args, cwd=ROOT, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = work / 'last_checkpoint'
    deadline = time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert last.exists(), 'the run stopped or timed out before its first checkpoint'
    killed_at = load_checkpoint_file(last.read_text().strip())['meta']['iter']
    assert 2 <= killed_at < iters and not (work / f'iter_{iters}.pth').exists()

    output = run(args + ['--resume'])
    assert f'resumed epoch: 0, iter: {killed_at}' in output
    logged = [int(i) for i in re.findall(r'Iter\(train\) \[ *(\d+)/', output)]
    assert logged == list(range(killed_at + 1, iters + 1))
    final = load_checkpoint_file(work / f'iter_{iters}.pth')
    assert final['meta']['iter'] == iters
    steps = {float(state['step']) for state in final['optimizer']['state'].values()}
    assert steps == {float(iters)}, 'AdamW step counts must continue from the checkpoint, not restart'


@pytest.mark.parametrize('task', sorted(CONFIGS))
def test_amp_training_losses_are_finite(task, demo_data, tmp_path):
    """--amp on CPU: bfloat16 autocast (MMEngine's AmpOptimWrapper needs CUDA); Mask R-CNN's RoIAlign and NMS run in
    float32."""
    config, work = CONFIGS[task], tmp_path / 'work'
    log = run([sys.executable, 'tools/train.py', config, '--amp', '--work-dir', str(work), '--cfg-options',
               *demo_options(task, demo_data, iters=3)])
    losses = train_losses(log)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses
    assert "type='CPUAutocastOptimWrapper'" in (work / Path(config).name).read_text()


def import_train_tool():
    sys.path.insert(0, str(ROOT / 'tools'))
    try:
        return importlib.import_module('train')
    finally:
        sys.path.remove(str(ROOT / 'tools'))


def test_cpu_autocast_optim_wrapper_runs_forward_in_bfloat16():
    layer = torch.nn.Linear(4, 4)
    wrapper = amp.CPUAutocastOptimWrapper(optimizer=torch.optim.SGD(layer.parameters(), lr=0.1))
    with wrapper.optim_context(layer):
        out = layer(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().square().mean())
    assert layer.weight.dtype == torch.float32


@pytest.mark.parametrize('cuda', [False, True])
def test_amp_settings(cuda, monkeypatch):
    """--amp: AmpOptimWrapper on CUDA (fp16 by default), bf16 autocast on CPU; for detectors under bfloat16, mmcv's
    RoIAlign and NMS (no bfloat16 kernels) are made to run in float32."""
    from mmcv.ops import RoIAlign
    from mmengine.config import Config
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)

    def amp_wrapper(scope: str, precision: str) -> dict:
        cfg = Config(dict(default_scope=scope, optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='AdamW'))))
        amp.setup_amp(cfg, precision)
        return cfg.optim_wrapper

    if cuda:
        assert amp_wrapper('mmdet', 'default').type == 'AmpOptimWrapper'
        assert amp_wrapper('mmseg', 'bf16').dtype == 'bfloat16'
        assert amp_wrapper('mmseg', 'fp16').dtype == 'float16'
    else:
        assert amp_wrapper('mmseg', 'default').type == 'CPUAutocastOptimWrapper'
        with pytest.raises(ValueError, match='needs CUDA'):
            amp_wrapper('mmseg', 'fp16')
    monkeypatch.setattr(RoIAlign, 'forward', RoIAlign.forward)  # undone after the test
    detector = amp_wrapper('mmdet', 'bf16' if cuda else 'default')
    assert detector.type == ('AmpOptimWrapper' if cuda else 'CPUAutocastOptimWrapper')
    assert RoIAlign.forward.float32_island


def test_detection_ops_run_in_float32_under_bf16_autocast(monkeypatch):
    """RoIAlign and NMS on bfloat16 inputs: float32 kernels, bfloat16 results equal to the float32 ones (rounded)."""
    from mmcv.ops import RoIAlign, batched_nms

    from mmvmamba.engine.amp import detection_ops_in_float32
    nms_module = importlib.import_module('mmcv.ops.nms')
    monkeypatch.setattr(RoIAlign, 'forward', RoIAlign.forward)
    monkeypatch.setattr(nms_module, 'nms', nms_module.nms)
    detection_ops_in_float32()
    features, rois = torch.randn(1, 4, 16, 16), torch.tensor([[0.0, 1.0, 2.0, 9.0, 12.0]])
    roi_align = RoIAlign((3, 3), spatial_scale=1.0, sampling_ratio=2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        pooled = roi_align(features.bfloat16(), rois.bfloat16())
    assert pooled.dtype == torch.bfloat16
    assert torch.equal(pooled, roi_align(features.bfloat16().float(), rois.bfloat16().float()).bfloat16())
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    scores, ids = torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3)
    dets, keep = batched_nms(boxes.bfloat16(), scores.bfloat16(), ids, dict(iou_threshold=0.5))
    assert keep.tolist() == [0, 2] and dets.dtype == torch.bfloat16


def test_teardown_destroys_the_process_group():
    """The tools end a multi-process run by destroying its process group (left to interpreter exit, gloo's threads
    can abort the process after the work is done)."""
    train = import_train_tool()
    torch.distributed.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{free_port()}', rank=0, world_size=1)
    assert torch.distributed.is_initialized()
    train.teardown_distributed()
    assert not torch.distributed.is_initialized()
    train.teardown_distributed()  # nothing to do: no error


def test_compile_switch_compiles_a_vmamba_backbone_and_refuses_others():
    from mmengine.config import Config
    train = import_train_tool()
    cfg = Config.fromfile(str(ROOT / CONFIGS['upernet']))
    train.compile_backbone(cfg)
    assert cfg.model.backbone.compile is True
    swin = Config(dict(model=dict(backbone=dict(type='SwinTransformer'))))
    with pytest.raises(ValueError, match="--compile compiles a VMamba backbone.*'SwinTransformer'.*compile=True"):
        train.compile_backbone(swin)
