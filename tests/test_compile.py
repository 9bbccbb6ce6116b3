"""torch.compile and CUDA graphs: the backbone is one graph, a compiled model equals the eager one (gradients too) at
any image size, the backend choice is guarded, and a whole training step replays in a CUDA graph (GPU)."""
import pytest
import torch
import torch._dynamo

from mmvmamba import ops
from mmvmamba.models.backbones import vmamba
from mmvmamba.models.backbones.vmamba import VMamba, compile_arguments

# both block generations, small: v2 (d_state 1, MLP, conv downsample) and v1 (gated, d_state 2, patch merging)
SMALL = {'v2': dict(depths=(1, 1, 2, 1), embed_dim=16, d_state=1, ssm_ratio=1.0, gated=False, conv_bias=False,
                    mlp_ratio=2.0, downsample='v3', patch_embed='v2', drop_path_rate=0.0),
         'v1': dict(depths=(1, 1, 1, 1), embed_dim=16, d_state=2, ssm_ratio=2.0, gated=True, conv_bias=True,
                    mlp_ratio=0.0, downsample='v1', patch_embed='v1', drop_path_rate=0.0)}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def forward_backward(run, model: torch.nn.Module, x: torch.Tensor):
    """Outputs of ``run(x)`` (``model`` or its compiled form) and every parameter's gradient of a fixed weighted sum
    of them."""
    model.zero_grad(set_to_none=True)
    outs = run(x)
    sum((o * torch.linspace(-1, 1, o.numel(), device=o.device).view_as(o)).sum() for o in outs).backward()
    return [o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same(compiled, eager, tol: float):
    (outs_c, grads_c), (outs_e, grads_e) = compiled, eager
    for c, e in zip(outs_c, outs_e, strict=True):
        assert rel_l2(c, e) <= tol
    bad = {n: rel_l2(g, grads_e[n]) for n, g in grads_c.items() if not rel_l2(g, grads_e[n]) <= tol}
    assert not bad, bad


@pytest.mark.parametrize('generation', ['v2', 'v1'])
def test_backbone_is_one_graph_with_no_break_on_the_reference_ops(generation):
    model = VMamba(SMALL[generation]).train()
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 96))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_compiled_backbone_equals_eager_at_two_image_sizes_without_recompiling():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = VMamba(SMALL['v2']).train()
    compiled = torch.compile(model, backend='aot_eager', dynamic=True, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for size in ((64, 96), (96, 80)):
            x = torch.randn(2, 3, *size)
            assert_same(forward_backward(compiled, model, x), forward_backward(model, model, x), 1e-5)


def test_inductor_compiles_dynamic_sizes_and_equals_eager():
    """The backbone's own compile arguments (``VMamba(compile=...)``): inductor with dynamic sizes compiles (a saved
    channel-last view made it fail to order symbolic strides, on torch 2.11 and 2.14) and equals eager, outputs and
    gradients."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = VMamba(SMALL['v2']).train()
    compiled = torch.compile(model, **compile_arguments(dict(dynamic=True, fullgraph=True)))
    for size in ((64, 96), (96, 80)):
        x = torch.randn(2, 3, *size)
        assert_same(forward_backward(compiled, model, x), forward_backward(model, model, x), 1e-5)


def test_inductor_backend_recomputes_views_for_its_own_compilation_only(monkeypatch):
    """The backbone's inductor backend compiles with recompute_views on, inductor's layout optimization off (and the
    user's mode and options), and leaves recompute_views as it was; other backends are passed through unchanged."""
    import torch._inductor.compile_fx
    seen = {}

    def compile_fx(graph, example_inputs, config_patches):
        seen.update(recompute_views=torch._functorch.config.recompute_views, patches=config_patches)
        return graph

    monkeypatch.setattr(torch._inductor.compile_fx, 'compile_fx', compile_fx)
    before = torch._functorch.config.recompute_views
    arguments = compile_arguments(dict(mode='max-autotune-no-cudagraphs', dynamic=True))
    assert arguments['backend'] is vmamba.inductor_recomputing_views and arguments['dynamic']
    arguments['backend'](None, [], mode=arguments['mode'], options={'max_autotune_gemm': False})
    assert seen['recompute_views'] and torch._functorch.config.recompute_views == before
    assert seen['patches']['max_autotune'] and seen['patches']['max_autotune_gemm'] is False
    assert seen['patches']['layout_optimization'] is False  # channels-last strides on (B, H, W, C) tensors
    assert compile_arguments(dict(backend='aot_eager')) == dict(backend='aot_eager')


@pytest.mark.parametrize('dynamic,options,expected', [(True, None, False), (False, None, None),
                                                       (True, {'triton.coalesce_tiling_analysis': True}, True)])
def test_dynamic_size_compiles_turn_off_inductors_coalescing_analysis(monkeypatch, dynamic, options, expected):
    """torch 2.11's inductor fails an assertion with no message in its Triton tiling's coalescing analysis on this
    backbone's dynamic-size graphs (reproduced on the CPU through inductor's Triton code generator; 2.14.1 compiles
    them): a graph with symbolic sizes is compiled with the analysis off, a static one with inductor's default, and
    the user's options win."""
    import torch._inductor.compile_fx
    seen = []

    def compile_fx(graph, example_inputs, config_patches):
        seen.append(config_patches)
        return graph.forward

    monkeypatch.setattr(torch._inductor.compile_fx, 'compile_fx', compile_fx)
    torch._dynamo.reset()

    def backend(graph, example_inputs):
        return vmamba.inductor_recomputing_views(graph, example_inputs, options=options)

    assert torch.compile(lambda x: x * 2, backend=backend, dynamic=dynamic)(torch.ones(3, 5)).sum() == 30
    assert len(seen) == 1 and seen[0].get('triton.coalesce_tiling_analysis') == expected


def test_compiled_model_follows_the_backend_chosen_around_it():
    """The backend selection is guarded: a compiled model recompiles when a block chooses another backend."""
    torch._dynamo.reset()
    model = VMamba(SMALL['v2']).eval()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        real = compiled(x)[0]
        with ops.use_backend('shapes'):  # scans give zeros
            zeros = compiled(x)[0]
        again = compiled(x)[0]
        with ops.use_backend('shapes'):
            expected = model(x)[0]
    assert torch.equal(zeros, expected) and not torch.equal(zeros, real)
    assert torch.equal(again, real)


gpu = pytest.mark.gpu


@gpu
def test_backbone_is_one_graph_with_no_break_on_the_triton_ops():
    model = VMamba('tiny').cuda().train()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        explained = torch._dynamo.explain(model)(torch.randn(2, 3, 224, 160, device='cuda'))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@gpu
def test_inductor_compiled_model_equals_eager_on_the_gpu_in_fp32():
    torch._dynamo.reset()
    torch.manual_seed(0)
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model = VMamba('tiny', drop_path_rate=0.0).cuda().train()
        compiled = torch.compile(model, **compile_arguments(dict(dynamic=True, fullgraph=True)))
        for size in ((224, 160), (192, 256)):
            x = torch.randn(2, 3, *size, device='cuda')
            assert_same(forward_backward(compiled, model, x), forward_backward(model, model, x), 1e-4)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@gpu
def test_reduce_overhead_compile_replays_cuda_graphs_and_equals_eager_on_the_gpu():
    """``mode='reduce-overhead'``: inductor captures the compiled forward and backward, the Triton operators inside
    them, in CUDA graphs (no graph skipped for them) and the replays equal the eager model, gradients included."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model = VMamba('tiny', drop_path_rate=0.0).cuda().train()
        compiled = torch.compile(model, **compile_arguments(dict(mode='reduce-overhead')))
        x = torch.randn(2, 3, 224, 160, device='cuda')
        for _ in range(3):  # warm-up, recording, then replays
            torch.compiler.cudagraph_mark_step_begin()
            result = forward_backward(compiled, model, x)
            assert_same(result, forward_backward(model, model, x), 1e-4)
        assert not counters['inductor']['cudagraph_skips'], dict(counters['inductor'])
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@gpu
def test_whole_bf16_training_step_replays_in_a_cuda_graph():
    """Forward, backward and a capturable AdamW step captured once; each replay equals the eager step's loss."""
    torch.manual_seed(0)
    model = VMamba('tiny', out_indices=(3,), drop_path_rate=0.0).cuda().train()
    head = torch.nn.Linear(768, 10).cuda()
    params = [*model.parameters(), *head.parameters()]
    images = torch.randn(8, 3, 224, 224, device='cuda')
    labels = torch.arange(8, device='cuda') % 10

    def loss_fn():
        with torch.autocast('cuda', dtype=torch.bfloat16):
            feats = model(images)[0].mean((2, 3))
            return torch.nn.functional.cross_entropy(head(feats).float(), labels)

    start = {id(p): p.detach().clone() for p in params}
    optimizer = torch.optim.AdamW(params, lr=1e-3, capturable=True)

    def eager_step() -> float:  # the loss is dropped on return: no autograd graph of the default stream stays alive
        optimizer.zero_grad(set_to_none=False)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        return loss.item()

    eager_losses = [eager_step() for _ in range(3)]
    with torch.no_grad():
        for p in params:
            p.copy_(start[id(p)])
    optimizer = torch.optim.AdamW(params, lr=1e-3, capturable=True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as capture requires (it also makes AdamW's state)
        for _ in range(2):
            optimizer.zero_grad(set_to_none=False)
            loss_fn().backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        optimizer.zero_grad(set_to_none=False)
        static_loss = loss_fn()
        static_loss.backward()
        optimizer.step()
    with torch.no_grad():  # start again from the eager run's weights, with a fresh optimizer state
        for p in params:
            p.copy_(start[id(p)])
        for state in optimizer.state.values():
            for value in state.values():
                value.zero_()
    replay_losses = []
    for _ in range(3):
        graph.replay()
        replay_losses.append(static_loss.item())
    assert replay_losses == pytest.approx(eager_losses, rel=1e-2)
    assert replay_losses[2] < replay_losses[0]


def test_backbone_compile_option_compiles_its_forward_and_equals_eager():
    """``VMamba(compile=...)``, the config switch: the module's forward runs compiled, with the same results."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    compiled = VMamba(SMALL['v1'], compile=dict(backend='aot_eager', fullgraph=True)).train()
    eager = VMamba(SMALL['v1']).train()
    eager.load_state_dict(compiled.state_dict())
    x = torch.randn(2, 3, 64, 96)
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert_same(forward_backward(compiled, compiled, x), forward_backward(eager, eager, x), 1e-5)
    assert compiled._compiled_call_impl is not None
    with pytest.raises(TypeError, match='compile must be'):
        VMamba(SMALL['v1'], compile='yes')
