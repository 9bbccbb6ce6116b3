"""The Triton backend's lean launch path: which calls it serves from its cache, what it passes to a compiled kernel,
and (GPU) that its launches compute what Triton's own launches compute."""
from __future__ import annotations

import importlib
import types

import pytest
import torch

try:
    from mmvmamba import ops
except ImportError:  # no mmengine (the bare GPU machine): the ops package alone, from the repository root
    import ops

pytest.importorskip('triton')
launch = importlib.import_module(f'{ops.__name__}.triton_backend.launch')


class FakeCompiled:
    """A compiled kernel's launch interface, recording what the lean path starts."""

    function, packed_metadata = 'function-handle', 'metadata'

    def __init__(self) -> None:
        self.started = []

    def run(self, *args) -> None:
        self.started.append(args)


class FakeKernel:
    """A JIT kernel whose own launch path (``kernel[grid](**arguments)``) records its calls and returns one
    compiled kernel per distinct call."""

    arg_names = ['x_ptr', 'n', 'eps', 'BLOCK']

    def __init__(self) -> None:
        self.own_launches = []

    def __getitem__(self, grid):
        def start(**arguments):
            self.own_launches.append((grid, arguments))
            return FakeCompiled()
        return start


@pytest.fixture
def cpu_launch(monkeypatch):
    """The lean path on CPU: stream 7, no launch hooks (the tests pass device 0)."""
    monkeypatch.setattr(launch, '_current_stream', lambda device: 7)
    monkeypatch.setattr(launch, '_runtime_knobs', types.SimpleNamespace(launch_enter_hook=None,
                                                                        launch_exit_hook=None))


def arguments(x: torch.Tensor, n: int = 64, block: int = 32) -> dict:
    return dict(x_ptr=x, n=n, eps=1e-5, BLOCK=block, num_warps=4)


def test_lean_launch_starts_a_known_kernel_with_its_arguments_in_parameter_order(cpu_launch):
    kernel, x = FakeKernel(), torch.zeros(64)
    lean = launch.LeanLaunch(kernel)
    lean((3,), arguments(x), 0)
    compiled = lean.compiled[next(iter(lean.compiled))]
    lean((5, 2), dict(reversed(arguments(x).items())), 0)  # keyword order does not matter
    assert len(kernel.own_launches) == 1 and lean.lean_launches == 1
    assert compiled.started == [(5, 2, 1, 7, 'function-handle', 'metadata', None, None, None, x, 64, 1e-5, 32)]


def test_lean_launch_takes_tritons_path_for_what_the_compiled_kernel_is_specialised_on(cpu_launch):
    kernel, x = FakeKernel(), torch.zeros(64)
    lean = launch.LeanLaunch(kernel)
    lean((1,), arguments(x), 0)
    variants = [arguments(x.double()), arguments(x[1:]), arguments(x, n=65), arguments(x, block=64),
                {**arguments(x), 'num_warps': 8}]
    for variant in variants:
        lean((1,), variant, 0)
    assert len(kernel.own_launches) == 1 + len(variants) and lean.lean_launches == 0
    for variant in variants:  # each now known
        lean((1,), variant, 0)
    assert lean.lean_launches == len(variants)


def test_lean_launch_takes_tritons_path_for_other_options_missing_parameters_or_a_missing_tensor(cpu_launch):
    kernel, x = FakeKernel(), torch.zeros(64)
    lean = launch.LeanLaunch(kernel)
    lean((1,), arguments(x), 0)  # learns that x_ptr takes a tensor
    partial = {name: value for name, value in arguments(x).items() if name != 'eps'}
    staged = {**arguments(x), 'num_stages': 2}
    no_tensor = {**arguments(x), 'x_ptr': None}
    for call in (partial, partial, staged, staged, no_tensor, no_tensor):
        lean((1,), call, 0)
    assert len(kernel.own_launches) == 7 and lean.lean_launches == 0 and len(lean.compiled) == 1


def test_lean_launch_takes_tritons_path_while_a_launch_hook_is_installed(cpu_launch, monkeypatch):
    kernel, x = FakeKernel(), torch.zeros(64)
    lean = launch.LeanLaunch(kernel)
    lean((1,), arguments(x), 0)
    monkeypatch.setattr(launch, '_runtime_knobs', types.SimpleNamespace(
        launch_enter_hook=types.SimpleNamespace(calls=[print]), launch_exit_hook=types.SimpleNamespace(calls=[])))
    lean((1,), arguments(x), 0)
    assert len(kernel.own_launches) == 2 and lean.lean_launches == 0
    monkeypatch.setattr(launch, '_runtime_knobs', types.SimpleNamespace(
        launch_enter_hook=types.SimpleNamespace(calls=[]), launch_exit_hook=types.SimpleNamespace(calls=[])))
    lean((1,), arguments(x), 0)
    assert len(kernel.own_launches) == 2 and lean.lean_launches == 1


def test_lean_launch_cache_is_bounded(cpu_launch, monkeypatch):
    monkeypatch.setattr(launch, '_KEYS_PER_KERNEL', 3)
    kernel, x = FakeKernel(), torch.zeros(64)
    lean = launch.LeanLaunch(kernel)
    for n in range(10):
        lean((1,), arguments(x, n=100 + n), 0)
    assert len(lean.compiled) <= 3 and len(kernel.own_launches) == 10


def test_layout_only_starts_nothing(cpu_launch):
    kernel = FakeKernel()
    with launch.layout_only():
        launch.launch(kernel, (1,), torch.device('cpu'), **arguments(torch.zeros(64)))
    assert not kernel.own_launches


@pytest.mark.gpu
def test_lean_launches_equal_tritons_own_on_the_gpu(monkeypatch):
    """The fused scan (forward and backward) and the LayerNorm, bf16, started the lean way, give what Triton's own
    launches give (up to the order of the scan backward's atomic adds)."""
    torch.manual_seed(0)
    b, c, h, w, rank = 2, 96, 28, 28, 6
    dev = 'cuda'
    x = torch.randn(b, c, h, w, device=dev, dtype=torch.bfloat16, requires_grad=True)
    delta = torch.randn(b, 4, rank, h, w, device=dev, dtype=torch.bfloat16, requires_grad=True)
    bc = torch.randn(2, b, 4, 1, h, w, device=dev, dtype=torch.bfloat16)
    A_logs = torch.zeros(4 * c, 1, device=dev, requires_grad=True)
    D = torch.ones(4 * c, device=dev, requires_grad=True)
    bias = torch.randn(4 * c, device=dev, requires_grad=True)
    weight = torch.randn(4, c, rank, device=dev, requires_grad=True)
    norm_w, norm_b = torch.randn(c, device=dev, requires_grad=True), torch.randn(c, device=dev, requires_grad=True)
    leaves = (x, delta, A_logs, D, bias, weight, norm_w, norm_b)

    def step():
        for leaf in leaves:
            leaf.grad = None
        y = ops.cross_selective_scan(x, delta, A_logs, bc[0], bc[1], D, bias, delta_weight=weight, A_is_log=True,
                                     float32_output=False, backend='triton')
        out = ops.layer_norm(y.transpose(1, 2).float(), norm_w, norm_b, out_dtype=torch.bfloat16, backend='triton')
        out.float().square().sum().backward()
        return [out.detach().clone()] + [leaf.grad.clone() for leaf in leaves]

    step()  # compiles, and fills the lean caches
    before = sum(launcher.lean_launches for launcher in launch._launchers.values())
    lean = step()
    assert sum(launcher.lean_launches for launcher in launch._launchers.values()) >= before + 4
    monkeypatch.setattr(launch, 'lean_path', False)  # every launch through Triton's own path
    own = step()
    assert torch.equal(lean[0], own[0])
    for lean_t, own_t in zip(lean, own, strict=True):
        error = (lean_t.double() - own_t.double()).norm() / own_t.double().norm()
        assert error <= 1e-5, error
