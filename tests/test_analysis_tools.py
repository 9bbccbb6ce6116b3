"""Analysis tools: their shared command line and timing, FLOPs as the paper counts them, ERF, activation maps, the
benchmark's sweep plot, config models."""
import argparse
import contextlib
import gc
import math
import os
import re
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch
import torch.nn as nn

from mmvmamba.models import VMamba, VMambaClassifier
from mmvmamba.ops import cross_selective_scan, selective_scan
from mmvmamba.utils import cli, timing
from mmvmamba.utils.config import build_from_config, model_kind
from mmvmamba.utils.flops import count_flops, selective_scan_flops
from tests.test_vmamba_backbone import SMALL_V2, SMALL_VANILLA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools', 'analysis'))

import activation_map  # noqa: E402
import benchmark  # noqa: E402
import erf  # noqa: E402
import get_flops  # noqa: E402

SMALL_OPTIONS = ['--arch-options', 'depths=1,1,1,1', 'embed_dim=16']


# --- shared command line and timing ---------------------------------------------------------------------------------

def test_time_step_divides_each_repeat_by_its_calls_and_keeps_the_last_output(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(timing.time, 'perf_counter', lambda: clock[0])
    calls = []

    def step():
        clock[0] += 1.0 + len(calls)  # the n-th call (from 0) takes 1 + n seconds
        calls.append(len(calls))
        return len(calls)

    result = timing.time_step(step, 'cpu', warmup=2, repeats=3, calls=2)
    assert len(calls) == 2 + 3 * 2 and result.output == 8
    assert result.seconds == [3.5, 5.5, 7.5]  # calls 2+3, 4+5, 6+7 take 3+4, 5+6, 7+8 seconds
    assert (result.median, result.min, result.mean) == (5.5, 3.5, 5.5)
    assert result.peak_cuda_bytes is None


def test_time_step_rejects_counts_below_one():
    with pytest.raises(ValueError, match='repeats >= 1'):
        timing.time_step(lambda: None, 'cpu', repeats=0)


def test_format_table_pads_every_column_to_its_widest_cell():
    assert cli.format_table(['a', 'long name'], [['wide cell', 1], ['x', 2.5]]).splitlines() == [
        '| a         | long name |',
        '|-----------|-----------|',
        '| wide cell | 1         |',
        '| x         | 2.5       |']


@pytest.mark.parametrize('argv,message', [(['cfg.py', '--arch', 'tiny'], 'not both'),
                                          ([], 'give a config file or --arch')])
def test_model_options_name_exactly_one_model(argv, message, capsys):
    parser = argparse.ArgumentParser(parents=[cli.model_arguments('a config')])
    with pytest.raises(SystemExit):
        cli.parse_model_args(parser, argv)
    assert message in capsys.readouterr().err
    assert cli.parse_model_args(parser, [], default_arch='tiny').arch == 'tiny'
    args = cli.parse_model_args(parser, ['--arch', 'tiny', '--arch-options', 'depths=1,1,1,1', '--device', 'cpu'])
    assert (args.config, args.arch, args.arch_options, args.checkpoint) == (None, 'tiny', {'depths': [1, 1, 1, 1]},
                                                                            None)


# --- FLOPs ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('arch,gflops', [('tiny-s1l8', 4.906), ('tiny-s2l5', 4.858), ('vanilla-tiny', 5.627)])
def test_flops_match_the_paper(arch, gflops):
    model = VMambaClassifier(arch, num_classes=1000)
    report = count_flops(model, torch.randn(1, 3, 224, 224))
    assert round(report.flops / 1e9, 3) == gflops
    assert report.scan_calls == sum(model.backbone.arch['depths'])
    assert report.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('arch', [SMALL_V2, SMALL_VANILLA], ids=['v2', 'vanilla'])
def test_each_scan_call_counts_by_the_rule(arch):
    model = VMamba(arch).eval()
    batch, height, width = 2, 72, 100
    report = count_flops(model, torch.randn(batch, 3, height, width))
    expected = 0
    for i, layer in enumerate(model.layers):
        stride = 2 ** (i + 2)
        length = math.ceil(height / stride) * math.ceil(width / stride)
        for block in layer.blocks:
            expected += selective_scan_flops(batch, length, 4 * block.op.d_inner, block.op.d_state)
    assert report.scan_flops == expected
    assert report.scan_calls == sum(arch['depths'])


class PlainScan(nn.Module):
    """Calls the public (non-fused) selective scan, as a model outside VMamba might."""

    def __init__(self, channels=6, d_state=3, groups=2):
        super().__init__()
        self.A = nn.Parameter(-torch.rand(channels, d_state))
        self.groups = groups

    def forward(self, u):
        b = u.new_ones(u.shape[0], self.groups, self.A.shape[1], u.shape[2])
        y, last = selective_scan(u, u, self.A, b, b, return_last_state=True)
        return y + last.sum(-1, keepdim=True)


def test_plain_selective_scan_is_counted_and_scans_run_again_after_a_failing_count():
    report = count_flops(PlainScan(), torch.randn(3, 6, 50))
    assert report.scan_calls == 1
    assert report.scan_flops == selective_scan_flops(3, 50, 6, 3)
    with pytest.raises(RuntimeError):
        count_flops(nn.Linear(2, 2), torch.randn(1, 3))  # a failing trace leaves no scan skipped afterwards
    u = torch.randn(1, 6, 5)
    assert selective_scan(u, u, -torch.ones(6, 3), torch.ones(1, 2, 3, 5), torch.ones(1, 2, 3, 5)).abs().sum() > 0


def test_running_the_scans_gives_the_same_count_and_outputs_are_untouched():
    model = VMamba(SMALL_V2).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        before = model(x)
    assert count_flops(model, x).flops == count_flops(model, x, run_scans=True).flops
    with torch.no_grad():
        after = model(x)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_get_flops_cli_for_an_arch(capsys):
    report = get_flops.main(['--arch', 'tiny', *SMALL_OPTIONS, '--shape', '64', '96', '--table', '1'])
    out = capsys.readouterr().out
    assert report.flops > 0 and 'FLOPs:' in out and 'not counted' in out and 'backbone' in out


def test_analysis_tool_given_a_missing_config_names_it_and_where_configs_are(tmp_path):
    missing = str(tmp_path / 'mask_rcnn_vmamba_tiny.py')
    with pytest.raises(FileNotFoundError, match=f"Config file not found: '{missing}'. The configs are under configs/"):
        get_flops.main([missing])


def test_get_flops_with_the_shipped_classification_config():
    config = os.path.join(ROOT, 'configs', 'vmamba_t_8xb128_in1k.py')
    if not os.path.exists(config):
        pytest.skip('configs/vmamba_t_8xb128_in1k.py is not there')
    report = get_flops.main([config])
    assert round(report.flops / 1e9, 3) == 4.906


@pytest.mark.parametrize('name,kind', [('mask_rcnn_vmamba_demo.py', 'detector'),
                                        ('upernet_vmamba_demo.py', 'segmentor')])
def test_get_flops_for_detector_and_segmentor_configs(name, kind):
    config = os.path.join(ROOT, 'configs', 'demo', name)
    if not os.path.exists(config):
        pytest.skip(f'configs/demo/{name} is not there')
    model = build_from_config(config)
    assert model_kind(model) == kind
    backbone = count_flops(model.backbone, torch.randn(1, 3, 128, 160))
    report = get_flops.main([config, '--shape', '128', '160'])
    assert report.scan_calls == backbone.scan_calls and report.flops > backbone.flops


def test_config_models_are_built_without_their_checkpoint():
    config = os.path.join(ROOT, 'configs', 'upernet_vmamba_t_512x512_160k_ade20k.py')
    if not os.path.exists(config):
        pytest.skip('configs/upernet_vmamba_t_512x512_160k_ade20k.py is not there')
    model = build_from_config(config)  # the checkpoint it names does not exist here
    assert model.backbone.init_cfg is None
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


# --- images ---------------------------------------------------------------------------------------------------------

def read_png(path):
    from PIL import Image

    with Image.open(path) as img:
        assert img.format == 'PNG'
        return np.asarray(img.convert('RGB'))


def assert_real_png(path, width, height):
    pixels = read_png(path)
    assert pixels.shape == (height, width, 3)
    assert pixels.std() > 10  # not a blank canvas


def test_erf_png_random_inputs_and_compare_with_checkpoint(tmp_path):
    out = str(tmp_path / 'erf.png')
    maps = erf.main(['--arch', 'tiny', *SMALL_OPTIONS, '--size', '64', '--num-images', '2', '--device', 'cpu',
                     '--out', out])
    assert_real_png(out, 400, 430)
    field = maps['random init']
    assert field.shape == (64, 64) and field.min() >= 0 and field[32, 32] > 0

    checkpoint = tmp_path / 'trained.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in VMamba('tiny', depths=(1, 1, 1, 1), embed_dim=16)
                               .state_dict().items()}}, checkpoint)
    out = str(tmp_path / 'erf2.png')
    maps = erf.main(['--arch', 'tiny', *SMALL_OPTIONS, '--size', '64', '--num-images', '1', '--device', 'cpu',
                     '--checkpoint', str(checkpoint), '--compare-random', '--norm', 'log', '--out', out])
    assert_real_png(out, 800, 430)
    assert set(maps) == {'random init', 'trained'}
    assert not np.allclose(maps['random init'], maps['trained'])


def test_erf_from_an_image_folder(tmp_path):
    from PIL import Image

    from mmvmamba.utils.visual import synthetic_image
    for i in range(2):
        Image.fromarray(synthetic_image(80, seed=i)).save(tmp_path / f'{i}.png')
    out = str(tmp_path / 'erf.png')
    erf.main(['--arch', 'tiny', *SMALL_OPTIONS, '--size', '64', '--images', str(tmp_path), '--device', 'cpu',
              '--out', out])
    assert_real_png(out, 400, 430)


def test_erf_normalisations_span_zero_to_one():
    field = np.random.default_rng(0).random((8, 8)) ** 4
    for norm in ('power', 'log'):
        values = erf.normalise(field, norm)
        assert values.max() == pytest.approx(1.0) and values.min() >= 0
    assert erf.area_for_share(np.pad(np.ones((1, 1)), 4), 0.99) == pytest.approx(9 / 81)


def test_activation_map_png(tmp_path):
    out = str(tmp_path / 'act.png')
    combined = activation_map.main(['--arch', 'tiny', *SMALL_OPTIONS, '--size', '96', '--stage', '1', '--routes',
                                    '--query', '20', '70', '--device', 'cpu', '--out', out])
    assert_real_png(out, 6 * 400, 430)
    assert combined.shape == (12, 12) and combined.max() == pytest.approx(1.0) and combined.min() >= 0


@pytest.mark.parametrize('arch', [SMALL_V2, SMALL_VANILLA], ids=['v2', 'vanilla'])
def test_activation_map_is_the_scan_jacobian(arch):
    """Each position's weight is d y_query / d u_position of the layer's scan (channel mean, D term excluded)."""
    torch.manual_seed(0)
    scan = activation_map.capture_scan(VMamba(arch).eval(), torch.randn(1, 3, 96, 128), 2, 0)
    height, width = scan['x'].shape[2:]
    query = (2, 1)
    routes = activation_map.route_contributions(scan, query)
    x = scan['x'].double().requires_grad_()
    out = cross_selective_scan(x, scan['delta'].double(), scan['A'].double(), scan['B'].double(), scan['C'].double(),
                               None, scan['delta_bias'].double(), True,
                               delta_weight=scan['delta_weight'].double(), A_is_log=scan['A_is_log'])
    (grad,) = torch.autograd.grad(out[0, :, query[0] * width + query[1]].sum(), x)
    expected = grad[0].sum(0) / x.shape[1]
    assert torch.allclose(routes.sum(0), expected, rtol=1e-9, atol=1e-14)
    # route 0 (row-major) reaches only positions up to the query in reading order
    assert routes[0].flatten()[query[0] * width + query[1] + 1:].abs().max() == 0


# --- profile_block --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('arch', [SMALL_V2, SMALL_VANILLA], ids=['v2', 'vanilla'])
def test_profile_block_parts_run_the_blocks_own_steps_on_its_intermediates(arch):
    import profile_block

    torch.manual_seed(0)
    block = VMamba(arch).eval().layers[0].blocks[0]
    x = torch.randn(2, 8, 12, block.norm.weight.shape[0])
    parts = profile_block.block_parts(block, x, None)
    assert list(parts)[:7] == ['norm', 'in_proj', 'dwconv+silu', 'x_proj', 'dt_proj+scan', 'out_norm', 'out_proj']
    with torch.no_grad():
        scan, (conv_out, *projected) = parts['dt_proj+scan']
        assert torch.equal(scan(conv_out, *projected), block.op.scan(conv_out))
        assert all(torch.equal(a, b) for a, b in zip(parts['x_proj'][0](conv_out), projected, strict=True))
        if not block.op.gated:  # without the gate, out_proj's input is the whole of SS2D's output path
            out_proj, (y,) = parts['out_proj']
            assert torch.allclose(out_proj(y), block.op(block.norm(x)), atol=1e-6)
        if block.mlp_ratio > 0:
            add_norm, (residual, branch) = parts['residual+norm2']
            assert residual is x and torch.equal(branch, block.op(block.norm(x)))
            total, normed2 = add_norm(residual, branch)
            assert torch.equal(total, x + branch) and torch.equal(normed2, block.norm2(x + branch))
        conv, (conv_in,) = parts['dwconv+silu']
        pytorch_conv, (same_input,) = parts['dwconv+silu, PyTorch']
        assert same_input is conv_in and torch.equal(conv(conv_in).permute(0, 3, 1, 2), conv_out)
        assert torch.allclose(pytorch_conv(conv_in), conv_out, atol=1e-6)


# --- benchmark ------------------------------------------------------------------------------------------------------

def test_benchmark_sweep_writes_a_plot(tmp_path):
    out = str(tmp_path / 'sweep.png')
    results = benchmark.main(['--device', 'cpu', '--arch', 'tiny', *SMALL_OPTIONS, '--sweep', '--sweep-sizes', '64',
                              '96', '--baselines', 'none', '--warmup', '0', '--iters', '1', '--repeats', '1',
                              '--out', out])
    assert_real_png(out, 900, 360)
    assert [r.size for r in results] == [(64, 64), (96, 96)]
    assert benchmark.main(['--device', 'cpu', '--arch', 'tiny', *SMALL_OPTIONS, '--sweep', '--flops-only',
                           '--sweep-sizes', '64', '96', '128', '--baselines', 'none', '--out', out]) == []
    assert_real_png(out, 450, 360)


def test_benchmark_runs_every_mode_and_precision(capsys):
    results = benchmark.main(['--device', 'cpu', '--arch', 'tiny', *SMALL_OPTIONS, '--size', '32', '--batch', '2',
                              '--det', '--det-size', '32', '64', '--warmup', '0', '--iters', '1', '--repeats', '1'])
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[0].startswith('device: cpu') and lines[-1].startswith('| VMamba tiny-s1l8 (modified)')
    assert {(r.precision, r.mode) for r in results} == {('fp32', 'infer'), ('bf16', 'infer'), ('fp32', 'train'),
                                                        ('bf16', 'train'), ('fp32', 'fwd+bwd'), ('bf16', 'fwd+bwd')}


def test_benchmark_reports_when_each_models_first_step_is_done(capsys):
    benchmark.main(['--device', 'cpu', '--arch', 'tiny', *SMALL_OPTIONS, '--size', '32', '--batch', '2',
                    '--precision', 'fp32', '--mode', 'infer', '--warmup', '1', '--iters', '1', '--repeats', '1'])
    lines = [line for line in capsys.readouterr().out.splitlines() if 'first step' in line]
    assert len(lines) == 1
    assert re.fullmatch(r'VMamba tiny-s1l8 \(modified\) 32 fp32 infer: first step done \d+\.\d\d s after its setup '
                        r'began', lines[0])
    args = benchmark.parse_args(['--device', 'cpu', '--warmup', '1'])
    step = benchmark.Step(nn.Conv2d(3, 4, 3), (8, 8), 1, 'fp32', 'train', args)
    assert step.first_step_seconds > 0
    args.warmup = 0
    assert benchmark.Step(nn.Conv2d(3, 4, 3), (8, 8), 1, 'fp32', 'train', args).first_step_seconds is None


def test_benchmark_compares_with_swin_and_convnext(capsys):
    pytest.importorskip('timm')
    results = benchmark.main(['--device', 'cpu', '--arch', 'tiny', *SMALL_OPTIONS, '--size', '32', '--compare',
                              '--det', '--det-size', '32', '64', '--precision', 'bf16', '--mode', 'infer',
                              '--warmup', '0', '--iters', '1', '--repeats', '1'])
    table = capsys.readouterr().out.rstrip().split('Throughput')[-1]
    swin = benchmark.SWIN['tiny']
    assert {r.model for r in results if r.mode == 'infer'} == {'VMamba tiny-s1l8 (modified)', swin,
                                                               benchmark.CONVNEXT}
    assert {r.model for r in results if r.mode == 'fwd+bwd'} == {'VMamba tiny-s1l8 (modified) backbone',
                                                                 f'{swin} backbone'}
    assert next(line for line in table.splitlines() if line.startswith(f'| {swin}')).rstrip(' |').endswith('1.00x')


# the PyTorch calls one call of each Triton operator makes on the host (forward, backward), as docs/analysis.md
# gives them: a change that adds calls to the operators' host path fails here
OPERATOR_TORCH_CALLS = {'layer_norm': (4, 4), 'add_layer_norm': (5, 5), 'cross_selective_scan': (7, 36),
                        'depthwise_conv_silu': (1, 6)}


def test_operators_make_no_more_torch_calls_than_documented():
    """host_overhead.py (run in its own process: it sets TRITON_INTERPRET before importing triton) counts each Triton
    operator's PyTorch calls; none exceeds its documented count, and its microseconds are positive."""
    done = subprocess.run([sys.executable, 'tools/analysis/host_overhead.py', '--size', '2', '--calls', '3',
                           '--repeats', '1'], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {cells[0]: cells[1:] for line in done.stdout.splitlines() if line.startswith('| ')
            for cells in [[c.strip() for c in line.strip('|').split('|')]] if cells[0] in OPERATOR_TORCH_CALLS}
    assert set(rows) == set(OPERATOR_TORCH_CALLS), done.stdout
    for name, (forward_us, backward_us, forward_calls, backward_calls) in rows.items():
        assert float(forward_us) > 0 and float(backward_us) > 0
        most_forward, most_backward = OPERATOR_TORCH_CALLS[name]
        assert int(forward_calls) <= most_forward and int(backward_calls) <= most_backward, (name, rows[name])


def test_kernel_resources_compiles_the_kernels_a_step_launches_for_the_gpu_without_one():
    """kernel_resources.py records a training step's launches (layout-only, no kernel run) and compiles the chosen
    kernels for sm_90a with Triton's ptxas: a row per distinct variant, with registers and what fits a
    multiprocessor."""
    pytest.importorskip('triton')
    import kernel_resources

    rows = kernel_resources.main(['--arch', 'tiny', '--size', '64', '--only', '_dwconv_silu_fwd', '_dwconv_bwd_dx'])
    kernels = {row[0] for row in rows}
    assert kernels == {'_dwconv_silu_fwd', '_dwconv_bwd_dx'}, rows
    for _, variant, warps, registers, spills, programs, warps_per_sm in rows:
        assert 'BW=' in variant and 0 < int(registers) <= 255 and re.fullmatch(r'\d+/\d+', spills)
        assert int(programs) == kernel_resources.programs_per_sm(int(registers), int(warps)) >= 1
        assert int(warps_per_sm) == int(programs) * int(warps)


def test_kernel_resources_records_the_scan_launches_with_the_gpus_tiles():
    """Recorded on the CPU (under the interpreter, whose own tiles are small), the scans' launches carry the tile
    sizes a GPU run would use: chunks of 8 steps, 32 channels a row for d_state 1."""
    pytest.importorskip('triton')
    import kernel_resources

    launches = kernel_resources._recorded(kernel_resources.parse_args(['--arch', 'tiny', '--size', '64']))
    scans = [e['arguments'] for e in launches if e['kernel'] in ('scan_fwd_kernel', 'scan_bwd_kernel')]
    assert scans and all(a['T'] == 8 and a['BC'] == 32 for a in scans)
    assert {e['kernel'] for e in launches} >= {'scan_fwd_kernel', 'scan_bwd_kernel', '_layer_norm_fwd',
                                               '_layer_norm_bwd', '_dwconv_silu_fwd', '_dwconv_silu_bwd_dz',
                                               '_dwconv_bwd_dx'}


def test_kernel_resources_table_names_the_meta_parameters_that_tell_variants_apart():
    import kernel_resources

    entries = [{'kernel': 'k'}, {'kernel': 'k'}, {'kernel': 'other'}]
    reports = [{'kernel': 'k', 'constexprs': {'T': 8, 'LOW_RANK': False}, 'registers': 128, 'warps': 8,
                'spill_stores': 0, 'spill_loads': 0},
               {'kernel': 'k', 'constexprs': {'T': 8, 'LOW_RANK': True, 'RP': 8}, 'registers': 255, 'warps': 8,
                'spill_stores': 48, 'spill_loads': 28},
               {'kernel': 'other', 'constexprs': {'BC': 32}, 'registers': 40, 'warps': 4, 'spill_stores': 0,
                'spill_loads': 0}]
    rows = kernel_resources.table(entries, reports)
    assert [row[1] for row in rows] == ['LOW_RANK=False RP=-', 'LOW_RANK=True RP=8', '-']
    assert rows[1][3:] == ['255', '48/28', '1', '8']


def test_programs_per_sm_counts_registers_in_allocation_units_and_the_warp_limit():
    import kernel_resources

    assert kernel_resources.programs_per_sm(128, 8) == 2  # 65536 / (128 * 256)
    assert kernel_resources.programs_per_sm(121, 8) == 2  # allocated as 128
    assert kernel_resources.programs_per_sm(255, 4) == 2  # 256 * 128 threads
    assert kernel_resources.programs_per_sm(32, 4) == 16  # 64 warps a multiprocessor at most
    assert kernel_resources.programs_per_sm(16, 1) == 32  # 32 programs at most


def test_captured_step_keeps_the_tensors_its_graph_replays_into_alive(monkeypatch):
    """The graph holds no tensor: the captured step must keep the step function, and through it the model, alive."""
    class FakeStream:
        def __init__(self, device=None):
            pass

        def wait_stream(self, other):
            pass

    class FakeGraph:
        replays = 0

        def replay(self):
            FakeGraph.replays += 1

    monkeypatch.setattr(torch.cuda, 'Stream', FakeStream)
    monkeypatch.setattr(torch.cuda, 'current_stream', lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, 'stream', lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, 'CUDAGraph', FakeGraph)
    monkeypatch.setattr(torch.cuda, 'graph', lambda graph: contextlib.nullcontext())

    def training_step():
        """A step function that alone holds its model, as the benchmark's do."""
        model = nn.Linear(4, 4)
        images = torch.randn(2, 4)

        def step():
            model(images).sum().backward()
        return step, weakref.ref(model)

    step, model_alive = training_step()
    captured = benchmark.capture(step, torch.device('cpu'))
    del step
    gc.collect()
    assert model_alive() is not None
    captured()
    assert FakeGraph.replays == 1


@pytest.mark.gpu
def test_benchmark_graphs_of_two_models_replay_in_turns_on_the_gpu():
    """``--compare --cuda-graph``: the first model's step still owns its model after a second was built and captured,
    and the two graphs replay in turns (the first faulted when the benchmark kept only the graphs)."""
    args = benchmark.parse_args(['--arch', 'tiny', '--cuda-graph', '--batch', '4', '--precision', 'bf16', '--mode',
                                 'train', '--warmup', '1', '--iters', '1', '--repeats', '1'])
    model = VMambaClassifier(SMALL_V2, num_classes=10)
    model_alive = weakref.ref(model)
    first = benchmark.Step(model, (64, 64), 4, 'bf16', 'train', args)
    del model
    second = benchmark.Step(VMambaClassifier(SMALL_VANILLA, num_classes=10), (64, 64), 4, 'bf16', 'train', args)
    gc.collect()
    assert model_alive() is not None
    for _ in range(3):
        first.step()
        second.step()
    torch.cuda.synchronize()


def test_benchmark_compiles_vmamba_through_its_backbones_compile_arguments_and_baselines_as_they_are():
    vmamba = VMambaClassifier(SMALL_V2, num_classes=10)
    assert benchmark.compile_options(vmamba, 'max-autotune') == dict(
        mode='max-autotune', backend=benchmark.compile_arguments({})['backend'])
    assert benchmark.compile_options(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), 'default') == dict(mode='default')


@pytest.fixture
def benchmark_ops():
    pytest.importorskip('triton')
    import benchmark_ops
    return benchmark_ops


def test_benchmark_ops_baseline_is_another_checkouts_backend(benchmark_ops):
    baseline = benchmark_ops.load_baseline(ROOT)  # this checkout, imported a second time beside itself
    impls = benchmark_ops.implementations(baseline)
    assert impls['baseline fused'].func is baseline.cross_selective_scan
    assert impls['baseline fused'].func is not impls['triton fused'].func
    assert baseline.__name__ == 'baseline_ops'
    torch.manual_seed(0)
    x = dict(x=torch.randn(1, 2, 3, 4, dtype=torch.float64), delta=torch.randn(1, 4, 2, 3, 4, dtype=torch.float64),
             A=-torch.rand(8, 1, dtype=torch.float64), B=torch.randn(1, 4, 1, 3, 4, dtype=torch.float64),
             C=torch.randn(1, 4, 1, 3, 4, dtype=torch.float64))
    assert torch.equal(impls['baseline fused'](**x), impls['triton fused'](**x))  # float64: both on the reference


def test_benchmark_ops_times_the_baseline_beside_the_chosen_implementations(benchmark_ops):
    impls = dict.fromkeys(['reference', 'triton unfused', 'triton fused', 'baseline fused'])
    small, large = (benchmark_ops.Case(b, 4, 4, 8, 1, torch.float32) for b in (1, 1000))
    assert list(benchmark_ops.chosen(impls, ['triton fused'], small, 1e4)) == ['triton fused', 'baseline fused']
    assert list(benchmark_ops.chosen(impls, None, small, 1e4)) == list(impls)
    assert list(benchmark_ops.chosen(impls, None, large, 1e4)) == ['triton unfused', 'triton fused', 'baseline fused']
    assert list(benchmark_ops.chosen(impls, ['reference'], large, 1e4)) == ['baseline fused']
    del impls['baseline fused']
    assert list(benchmark_ops.chosen(impls, ['triton fused'], small, 1e4)) == ['triton fused']


def test_benchmark_ops_takes_turns_and_reports_medians(benchmark_ops, monkeypatch):
    timings = iter([5.0, 50.0, 1.0, 10.0, 3.0, 30.0, 2.0, 20.0, 4.0, 40.0, 9.0, 90.0])
    monkeypatch.setattr(benchmark_ops, 'bench', lambda fn: next(timings))
    order = []

    def impl(name):
        def fn():
            order.append(name)
            return torch.zeros(1)
        return fn

    inputs = benchmark_ops.Inputs(plain={}, leaves={}, grad_out=torch.zeros(1))
    times = benchmark_ops.time_in_turns({'a': impl('a'), 'b': impl('b')}, inputs, rounds=3)
    assert order == ['a', 'b'] * 3
    assert times == {'a': (4.0, 40.0), 'b': (2.0, 20.0)}  # a: 5, 3, 4 and 50, 30, 40; b: 1, 2, 9 and 10, 20, 90


@pytest.mark.parametrize('args,messages', [
    (['--only', 'triton fusd'], ["unknown implementation(s) ['triton fusd']", "'triton fused'"]),
    (['--baseline', 'no-such-checkout'], ['has no ops/triton_backend package']),
    (['--rounds', '0'], ['--rounds must be at least 1']),
    (['--sweep', '--rounds', '3'], ['drop --baseline and --rounds']),
])
def test_benchmark_ops_rejects_bad_options(args, messages):
    pytest.importorskip('triton')
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'analysis', 'benchmark_ops.py'), *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    for message in messages:
        assert message in done.stderr


def test_benchmark_ops_compile_jobs_run_each_shape_and_implementation_once_with_the_same_options(benchmark_ops):
    parser = benchmark_ops.build_parser()
    args = parser.parse_args(['--dtype', 'fp16', '--d-state', '4', '--shapes', 'classification', '--only', 'reference',
                              '--only', 'triton fused', '--reference-max-elements', '1e6', '--compile-jobs', '8'])
    cases = [benchmark_ops.Case(*s, 4, torch.float16) for s in benchmark_ops.CLASSIFICATION[:2]]
    cases[0].batch = 1  # small enough for the reference: it is timed (so compiled) at this shape only
    impls = dict.fromkeys(['reference', 'triton unfused', 'triton fused'])
    commands = benchmark_ops.warm_commands(args, cases, impls)
    runs = {job: parser.parse_args(command[2:]) for job, command in commands.items()}
    assert list(runs) == [('reference', 0), ('triton fused', 0), ('triton fused', 1)]
    assert all((run.only, run.warm_case) == ([name], index) for (name, index), run in runs.items())
    for run in runs.values():
        assert (run.dtype, run.d_state, run.shapes, run.reference_max_elements, run.compile_jobs, run.sweep) == (
            'fp16', 4, 'classification', 1e6, 0, False)
    sweep = parser.parse_args(['--sweep'])
    assert [parser.parse_args(c[2:]).only for c in benchmark_ops.warm_commands(sweep, cases, impls).values()] == [
        ['triton fused'], ['triton fused']]
    impls['baseline fused'] = None  # another checkout's kernel: compiled in a process of its own, once a shape
    assert list(benchmark_ops.warm_commands(args, cases[1:], impls)) == [('triton fused', 0), ('baseline fused', 0)]


def test_benchmark_ops_compile_jobs_report_a_failed_process(benchmark_ops, capsys):
    benchmark_ops.warm_cache({('triton fused', 0): [sys.executable, '-c', 'pass'],
                              ('triton unfused', 1): [sys.executable, '-c', 'import sys; sys.exit("no CUDA")']}, jobs=2)
    err = capsys.readouterr().err
    assert "compiling 'triton unfused' at shape 1 failed (exit 1):\nno CUDA" in err
    assert "'triton fused'" not in err
    assert 'compiled the kernels of 2 (shape, implementation) pairs in 2 processes at once' in err
