"""Starting the backend's Triton kernels, in one place: the lean launch path, the CUDA device guard, layout-only runs,
and the integer helpers that size launches.

``kernel[grid](**arguments)`` costs tens of microseconds on the host, most of it spent working out, argument by
argument, what the compiled kernel is specialised on (each integer's divisibility by 16 and equality to 1, each
pointer's alignment and dtype) and turning that into a cache key. A training step starts a few hundred of these
kernels with 10 to 70 arguments each, and the GPU waits for them. :class:`LeanLaunch` keeps, per kernel, the compiled
kernels by a key made directly from the argument values (integers and flags as they are, tensors as dtype and
16-byte alignment: at least as fine as Triton's own key), and starts a known one through its compiled launcher
directly. The first call with a new key, and every call while a Triton launch hook is installed (profilers), go
through Triton's own path.

The operators' fake implementations (what ``torch.compile`` traces with) run the same Python code as the real ones
inside ``layout_only()``: every buffer is allocated exactly as in a real run, so the fake outputs have the real
shapes and strides, and no kernel starts.
"""
from __future__ import annotations

import operator
import os
from collections.abc import Callable

import torch

from ..layout import LayoutOnly

layout_only = LayoutOnly()  # within ``with layout_only():`` :func:`launch` starts nothing

# A kernel's cache is emptied past this many keys (many image sizes): a later miss compiles nothing, it takes
# Triton's path once.
_KEYS_PER_KERNEL = 4096


try:  # Triton 3.4 and later: the launch hooks live in knobs, and compiled kernels take every argument in order
    from triton.knobs import runtime as _runtime_knobs
except ImportError:
    _runtime_knobs = None


def _lean_path_open() -> bool:
    """Whether the lean path may start a compiled kernel: on a Triton whose launcher convention it knows, with no
    launch hook installed (a profiler's hooks need Triton's own path)."""
    return _runtime_knobs is not None and all(
        not getattr(hook, 'calls', hook) for hook in (_runtime_knobs.launch_enter_hook,
                                                      _runtime_knobs.launch_exit_hook))


def _picker(keys: list) -> Callable[[object], tuple]:
    """A function picking the items at ``keys`` of a tuple or dict, as a tuple (at C speed for several keys)."""
    if len(keys) > 1:
        return operator.itemgetter(*keys)
    return lambda items: tuple(items[key] for key in keys)


class LeanLaunch:
    """Starts one Triton kernel; see the module docstring. ``lean_launches`` counts the calls that went the lean way
    (for tests and benchmarks).

    The key of a call is its device, its warps, its non-tensor arguments as they are (integers, flags, constexprs:
    Triton keys integers on their divisibility by 16 and equality to 1, which their values determine) and each tensor
    argument's dtype and 16-byte alignment. Which parameters take tensors is learnt from the first call; a call that
    passes no tensor to one of them takes Triton's path, and one that passes a tensor elsewhere keys on that tensor
    object (in practice Triton's path every time).
    """

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.names = tuple(kernel.arg_names)
        self._arguments = _picker(self.names)
        self._scalars = self._tensors = None
        self.compiled: dict[tuple, object] = {}
        self.lean_launches = 0

    def _key(self, arguments: dict, device: int) -> tuple[tuple, tuple] | None:
        """(the call's key, its arguments in parameter order), or None where a call names other options than
        ``num_warps``, leaves a parameter to its default or passes no tensor where the first call passed one."""
        if len(arguments) != len(self.names) + ('num_warps' in arguments):
            return None
        try:
            values = self._arguments(arguments)
        except KeyError:
            return None
        if self._tensors is None:
            tensors = [i for i, value in enumerate(values) if isinstance(value, torch.Tensor)]
            self._scalars = _picker([i for i in range(len(values)) if i not in tensors])
            self._tensors = _picker(tensors)
        try:
            tensors = [(t.dtype, t.data_ptr() % 16 == 0) for t in self._tensors(values)]
        except AttributeError:
            return None
        return (device, arguments.get('num_warps'), self._scalars(values), *tensors), values

    def __call__(self, grid: tuple[int, ...], arguments: dict, device: int) -> None:
        """Start the kernel on CUDA device ``device``, the current one."""
        found = self._key(arguments, device)
        if found is None:
            self.kernel[grid](**arguments)
            return
        key, values = found
        compiled = self.compiled.get(key)
        if compiled is None or not _lean_path_open():
            compiled = self.kernel[grid](**arguments)
            if len(self.compiled) >= _KEYS_PER_KERNEL:
                self.compiled.clear()
            self.compiled[key] = compiled
            return
        grid_x, grid_y, grid_z = (*grid, 1, 1)[:3]
        compiled.run(grid_x, grid_y, grid_z, _current_stream(device), compiled.function, compiled.packed_metadata,
                     None, None, None, *values)
        self.lean_launches += 1


def _current_stream(device: int) -> int:
    """The raw handle of the current CUDA stream of ``device``, the stream Triton launches on."""
    return torch._C._cuda_getCurrentRawStream(device)


# Triton's own path everywhere when False: under the interpreter (which runs the kernels in Python, nothing to save),
# and for comparisons
lean_path = os.environ.get('TRITON_INTERPRET') != '1'
_launchers: dict[object, LeanLaunch] = {}


def launcher(kernel) -> LeanLaunch:
    """The lean launcher of ``kernel`` (made on first use)."""
    found = _launchers.get(kernel)
    if found is None:
        found = _launchers[kernel] = LeanLaunch(kernel)
    return found


def _start(kernel, grid: tuple[int, ...], arguments: dict, device: int | None) -> None:
    """Start ``kernel`` on the current device, ``device`` (its index; None off CUDA)."""
    if lean_path and device is not None:
        launcher(kernel)(grid, arguments, device)
    else:
        kernel[grid](**arguments)


def launch(kernel, grid: tuple[int, ...], device: torch.device, **arguments) -> None:
    """``kernel[grid](**arguments)`` on ``device`` (the current CUDA device is switched only when it differs), by the
    lean path on CUDA."""
    if layout_only.active:
        if layout_only.skipped is not None:
            layout_only.skipped.append((kernel, grid, arguments))
        return
    if device.type != 'cuda':  # Triton's interpreter on CPU tensors
        _start(kernel, grid, arguments, None)
        return
    current = torch.cuda.current_device()
    if device.index is not None and device.index != current:
        with torch.cuda.device(device):
            _start(kernel, grid, arguments, device.index)
    else:
        _start(kernel, grid, arguments, current)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of positive integers. ``triton.cdiv`` computes the same through Triton's constexpr-function
    wrapper, several microseconds a call on the host: the launches of one training step use these hundreds of
    times."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), as ``triton.next_power_of_2`` without its wrapper's cost."""
    return 1 << max(n - 1, 0).bit_length()
