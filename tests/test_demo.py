"""The embedded demo data (tools/make_demo_data.py) and the training-step benchmark (tools/analysis)."""
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
from pycocotools.coco import COCO

ROOT = Path(__file__).resolve().parents[1]


def make_data(out: Path, *extra: str) -> None:
    subprocess.run([sys.executable, 'tools/make_demo_data.py', '--out', str(out), '--num-train', '6', '--num-val', '3',
                    *extra], cwd=ROOT, check=True, capture_output=True)


def test_demo_data_is_deterministic(tmp_path):
    make_data(tmp_path / 'a')
    make_data(tmp_path / 'b')
    make_data(tmp_path / 'c', '--seed', '1')
    files = sorted(p.relative_to(tmp_path / 'a') for p in (tmp_path / 'a').rglob('*') if p.is_file())
    assert len(files) == 2 + 3 * 9  # two COCO files, and per image one COCO and one ADE20K image plus a label map
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'b', [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    first = 'coco/train2017/000001.jpg'
    assert (tmp_path / 'a' / first).read_bytes() != (tmp_path / 'c' / first).read_bytes()


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
