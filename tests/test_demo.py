"""The embedded demo data (tools/make_demo_data.py), the digits classifier demo trained and tested through the tools,
and the training-step benchmarks (tools/analysis): one model, two models compared, N processes against one."""
from __future__ import annotations

import filecmp
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from sklearn.datasets import load_digits

from .test_train_test_tools import parse_metrics
from .test_train_test_tools import run as run_tool

ROOT = Path(__file__).resolve().parents[1]
NUM_DIGITS = 1797  # scikit-learn's load_digits()


def make_data(out: Path, *extra: str) -> None:
    subprocess.run([sys.executable, 'tools/make_demo_data.py', '--out', str(out), '--num-train', '6', '--num-val', '3',
                    *extra], cwd=ROOT, check=True, capture_output=True)


def test_demo_data_is_deterministic(tmp_path):
    make_data(tmp_path / 'a')
    make_data(tmp_path / 'b')
    make_data(tmp_path / 'c', '--seed', '1')
    files = sorted(p.relative_to(tmp_path / 'a') for p in (tmp_path / 'a').rglob('*') if p.is_file())
    # two COCO files, and per image one COCO and one ADE20K image plus a label map; every digit and two split lists
    assert len(files) == 2 + 3 * 9 + NUM_DIGITS + 2
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'b', [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    for seed_dependent in ('coco/train2017/000001.jpg', 'digits/meta/test.txt'):
        assert (tmp_path / 'a' / seed_dependent).read_bytes() != (tmp_path / 'c' / seed_dependent).read_bytes()


def test_demo_annotations_agree(tmp_path):
    """COCO boxes and areas are the drawn pixels of the ADE20K label maps; the polygons, rasterised by pycocotools
    (which leaves out part of the outline that OpenCV fills), cover the same shapes."""
    make_data(tmp_path)
    for coco_split, ade_split in (('train2017', 'training'), ('val2017', 'validation')):
        coco = COCO(str(tmp_path / f'coco/annotations/instances_{coco_split}.json'))
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == ['disc', 'square', 'triangle']
        for image in coco.loadImgs(coco.getImgIds()):
            pixels = cv2.imread(str(tmp_path / 'coco' / coco_split / image['file_name']))
            assert pixels.shape == (image['height'], image['width'], 3) and 128 <= min(pixels.shape[:2]) <= 160
            labels = cv2.imread(str(tmp_path / 'ade/ADEChallengeData2016/annotations' / ade_split /
                                    image['file_name'].replace('.jpg', '.png')), cv2.IMREAD_UNCHANGED)
            assert set(np.unique(labels)) <= {1, 2, 3, 4} and 1 in labels
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image['id']))
            assert 1 <= len(anns) <= 3
            drawn_total = 0
            for ann in anns:
                x, y, w, h = ann['bbox']
                drawn = np.zeros_like(labels)
                cv2.fillPoly(drawn, [np.array(ann['segmentation'][0], dtype=np.int32).reshape(-1, 2)], 1)
                drawn = drawn.astype(bool)
                assert (labels[drawn] == 1 + ann['category_id']).all()
                assert drawn.sum() == ann['area'] and ann['area'] > 200
                ys, xs = np.nonzero(drawn)
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
                polygon = coco.annToMask(ann).astype(bool)
                assert (polygon & drawn).sum() / (polygon | drawn).sum() > 0.85
                drawn_total += ann['area']
            assert (labels > 1).sum() == drawn_total  # nothing drawn outside the annotated shapes


@pytest.fixture(scope='module')
def digits_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('demo_data')
    make_data(out)
    return out / 'digits'


def read_split(digits: Path, split: str) -> list[tuple[str, int]]:
    """(file, label) pairs of an annotation file."""
    return [(name, int(label)) for name, label in (line.split(' ') for line in
                                                   (digits / 'meta' / f'{split}.txt').read_text().splitlines())]


def test_digits_split_is_stratified_and_labelled(digits_data):
    """Every digit of load_digits() is in exactly one split, with its label; each class holds out 20% (rounded)."""
    digits = load_digits()
    splits = {split: read_split(digits_data, split) for split in ('train', 'test')}
    indices = {split: [int(name.split('/')[1].removesuffix('.png')) for name, _ in samples]
               for split, samples in splits.items()}
    assert sorted(indices['train'] + indices['test']) == list(range(NUM_DIGITS))
    for split, samples in splits.items():
        assert all(name.startswith(f'{split}/') for name, _ in samples)
        assert [label for _, label in samples] == digits.target[indices[split]].tolist()
    for label in range(10):
        in_class = int((digits.target == label).sum())
        held_out = sum(1 for _, test_label in splits['test'] if test_label == label)
        assert held_out == round(in_class * 0.2), (label, held_out, in_class)


def test_digit_images_are_the_upsampled_digits(digits_data):
    """Each PNG is its load_digits() image (0..16 -> 0..255, white on black) upsampled bilinearly to 32x32, in 3 equal
    channels."""
    digits = load_digits()
    for name, _ in read_split(digits_data, 'train') + read_split(digits_data, 'test'):
        image = cv2.imread(str(digits_data / name), cv2.IMREAD_UNCHANGED)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8, (name, image.shape, image.dtype)
        original = digits.images[int(name.split('/')[1].removesuffix('.png'))].astype(np.float32) * 255 / 16
        expected = cv2.resize(original, (32, 32), interpolation=cv2.INTER_LINEAR)
        assert np.abs(image.astype(np.float32) - expected[..., None]).max() <= 0.5 + 1e-3, name


def test_mmpretrain_custom_dataset_reads_the_digits(digits_data):
    from mmpretrain.datasets import CustomDataset

    for split, expected in (('train', read_split(digits_data, 'train')), ('test', read_split(digits_data, 'test'))):
        dataset = CustomDataset(data_root=str(digits_data), ann_file=f'meta/{split}.txt',
                                metainfo=dict(classes=tuple('0123456789')))
        assert len(dataset) == len(expected)
        assert [(Path(info['img_path']), info['gt_label']) for info in dataset.load_data_list()] == [
            (digits_data / name, label) for name, label in expected]


def test_digit_size_below_backbone_minimum_is_refused(tmp_path):
    result = subprocess.run([sys.executable, 'tools/make_demo_data.py', '--out', str(tmp_path), '--digit-size', '16'],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode != 0 and '--digit-size must be >= 32' in result.stderr


def test_digits_demo_trains_and_tests_through_the_tools(digits_data, tmp_path):
    """The digits demo config, built by tools/dist_train.sh: one training step, its checkpoint tested by
    tools/dist_test.sh in one step; a classifier with the VMamba backbone, top-1 in the metrics."""
    config, work = 'configs/demo/vmamba_demo_digits.py', tmp_path / 'work'
    data = [f'{split}_dataloader.dataset.data_root={digits_data}' for split in ('train', 'test')]
    log = run_tool(['bash', 'tools/dist_train.sh', config, '1', '--work-dir', str(work), '--cfg-options', *data,
                    'train_dataloader.dataset.indices=4', 'train_dataloader.batch_size=4', 'train_cfg.max_epochs=1',
                    'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=1'])
    losses = [float(v) for v in re.findall(r'Epoch\(train\) +\[1\]\[1/1\].*?\sloss: (\S+)', log)]
    assert len(losses) == 1 and np.isfinite(losses[0]), losses
    built = (work / 'vmamba_demo_digits.py').read_text()
    assert "type='ImageClassifier'" in built and "type='VMamba'" in built
    checkpoint = work / 'epoch_1.pth'
    assert (work / 'last_checkpoint').read_text().strip() == str(checkpoint)
    output = run_tool(['bash', 'tools/dist_test.sh', config, str(checkpoint), '1', '--work-dir', str(tmp_path / 'test'),
                       '--cfg-options', *data, 'test_dataloader.dataset.indices=8', 'test_dataloader.batch_size=8'])
    assert re.search(r'Epoch\(test\) +\[1/1\]', output), output[-3000:]
    assert 0 <= parse_metrics(output)['accuracy/top1'] <= 100


def test_benchmark_train_step_on_cpu(tmp_path):
    """The benchmark times the demo Mask R-CNN against mmdet's Swin-T Mask R-CNN and prints their ratio."""
    out = tmp_path / 'bench.json'
    result = subprocess.run(
        [sys.executable, 'tools/analysis/benchmark_train_step.py', 'configs/demo/mask_rcnn_vmamba_demo.py',
         '--compare', 'configs/baselines/mask_rcnn_swin_t_1x.py', '--steps', '2', '--warmup', '1', '--batch', '1',
         '--size', '96', '128', '--boxes', '3', '--device', 'cpu', '--json', str(out)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [Path(r['config']).stem for r in results] == ['mask_rcnn_vmamba_demo', 'mask_rcnn_swin_t_1x']
    for r in results:
        assert r['steps'] == 2 and r['median_s'] > 0 and r['peak_memory_gb'] > 0 and r['size'] == [96, 128]
        assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(r['last_losses'])
        assert all(np.isfinite(list(r['last_losses'].values())))
    assert results[1]['params_m'] > 40 > results[0]['params_m']  # Swin-T Mask R-CNN has ~48M parameters
    ratio = re.search(r'ratio mask_rcnn_vmamba_demo / mask_rcnn_swin_t_1x: time x([\d.]+), memory x([\d.]+)',
                      result.stdout)
    assert ratio and float(ratio.group(1)) == round(results[0]['median_s'] / results[1]['median_s'], 2)


def test_ddp_scaling_benchmark_times_two_gloo_processes_against_one(tmp_path):
    """benchmark_ddp_scaling.py on CPU: one process, then 2 DDP processes over gloo training the demo Mask R-CNN;
    images per second, speedup and efficiency follow from the medians, and DDP raised no gradient stride warning."""
    out = tmp_path / 'scaling.json'
    result = subprocess.run(
        [sys.executable, 'tools/analysis/benchmark_ddp_scaling.py', 'configs/demo/mask_rcnn_vmamba_demo.py', '--gpus',
         '2', '--batch', '1', '--size', '96', '128', '--boxes', '3', '--steps', '2', '--warmup', '0', '--device', 'cpu',
         '--json', str(out)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    scaling = json.loads(out.read_text())
    single, parallel = scaling['runs']
    assert [(run['processes'], len(run['median_s'])) for run in (single, parallel)] == [(1, 1), (2, 2)]
    assert single['images_per_s'] == pytest.approx(1 / single['median_s'][0])
    assert parallel['images_per_s'] == pytest.approx(2 / max(parallel['median_s']))
    assert scaling['speedup'] == pytest.approx(parallel['images_per_s'] / single['images_per_s'])
    assert scaling['efficiency'] == pytest.approx(scaling['speedup'] / 2) and scaling['size'] == [96, 128]
    for run in (single, parallel):
        assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(run['losses'])
        assert all(np.isfinite(list(run['losses'].values())))
    assert parallel['stride_warnings'] == 0 and 'Grad strides do not match' not in result.stderr
    assert f'= {scaling["efficiency"]:.2f} N (target >= 0.90 N on one host)' in result.stdout
