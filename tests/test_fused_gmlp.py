"""The fully fused op (backend="fused": G-MLP + head + contraction + scatter in one Triton op) against the
float64 reference backend — forward, every gradient, double backward — on every group of the table, and its
memory contract (CPU: Triton interpreter, in float64 so that the comparison is tight)."""

import pytest
import torch

import fastik
from fastik.nn.packing import fusable, pack_gmlp
from fastik.ops._contract import triton_available
import fastik.ops.fused_gmlp as fg
from fastik.ops.fused_gmlp import HEAD_TILE, HEAD_TILE_LISTS, fused_gmlp_conv, packed_conv_reference

from conftest import FIELDS, LargestTensor, relative_error
from fused_helpers import OutputSizes, op_bodies

pytestmark = pytest.mark.skipif(not triton_available(torch.device("cpu")) and not torch.cuda.is_available(),
                                reason="triton cannot run here (no CUDA and TRITON_INTERPRET unset)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL64 = 1e-10


def twins(in_type, out_type, dtype=torch.float64, **kw):
    """The same layer (same parameters, perturbed from their init) on the reference and fused backends."""
    torch.manual_seed(0)
    ref = fastik.ImplicitPointConv(in_type, out_type, backend="reference", **kw).to(DEVICE, dtype)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.2 * torch.randn_like(p))
    fused = fastik.ImplicitPointConv(in_type, out_type, backend="fused", **kw).to(DEVICE, dtype)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def graph(n, e, dim, seed=0, isolated=2, self_loops=3, dtype=torch.float64):
    """Random positions and edges with isolated nodes and a few self-loops."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, dim, generator=g, dtype=dtype)
    ei = torch.randint(0, n - isolated, (2, e), generator=g)
    ei[1, :self_loops] = ei[0, :self_loops]
    return pos.to(DEVICE), ei.to(DEVICE)


def op_inputs(ref, n, e):
    """The fused op's inputs for layer ``ref`` on graph(n, e, 3): src, tgt, z, env (contiguous) and the packed
    G-MLP as a dict of contiguous tensors (float64), as the kernels' wrappers take them."""
    pos, (src, tgt) = graph(n, e, 3)
    k = ref.kernel
    r = pos[src] - pos[tgt]
    z, env = k.embed(r).detach().contiguous(), (k.envelope(r) * ref.scale).detach().contiguous()
    packed = {name: v.contiguous() if torch.is_tensor(v) else v
              for name, v in pack_gmlp(k, torch.float64)._asdict().items()}
    return src, tgt, z, env, packed


def outputs_and_grads(conv, inputs: dict, weight_seed=1):
    """y and the gradients of a fixed random projection of y w.r.t. every float input and every parameter."""
    inputs = {k: (v.detach().clone().requires_grad_() if torch.is_tensor(v) and v.is_floating_point() else v)
              for k, v in inputs.items()}
    y = conv(**inputs)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(weight_seed), dtype=torch.float64)
    w = w.to(y.device, y.dtype)
    wrt = [v for v in inputs.values() if torch.is_tensor(v) and v.requires_grad] + list(conv.parameters())
    return y, torch.autograd.grad((y * w).sum(), wrt, allow_unused=True)


def assert_same_grads(g_fus, g_ref, n_inputs, tol):
    """Each input's gradient, then all parameter gradients as one vector (a single tiny gradient, a difference
    of large terms, has no meaningful relative error of its own)."""
    assert [a is None for a in g_fus] == [b is None for b in g_ref]
    flat = lambda gs: torch.cat([g.reshape(-1) for g in gs if g is not None])
    pairs = list(zip(g_fus[:n_inputs], g_ref[:n_inputs])) + [(flat(g_fus[n_inputs:]), flat(g_ref[n_inputs:]))]
    for a, b in pairs:
        assert relative_error(a, b) < tol, relative_error(a, b)


def assert_same(ref, fused, inputs, tol=TOL64):
    y_ref, g_ref = outputs_and_grads(ref, inputs)
    y_fus, g_fus = outputs_and_grads(fused, inputs)
    assert relative_error(y_fus, y_ref) < tol
    n_inputs = sum(torch.is_tensor(v) and v.is_floating_point() for v in inputs.values())
    assert_same_grads(g_fus, g_ref, n_inputs, tol)


@pytest.fixture(params=[False, True], ids=["edge-wise", "pooled"])
def pooled(request, monkeypatch) -> bool:
    """Both heads of the fused op: per edge (POOL_MIN_DEGREE = ∞) and per target on pooled features (0)."""
    from fastik.triton_kernels import gmlp_conv

    monkeypatch.setattr(gmlp_conv, "POOL_MIN_DEGREE", 0 if request.param else float("inf"))
    return request.param


def test_any_group_matches_reference(any_group, pooled):
    """Forward and every gradient on every group of the table, with either head: per edge (in-degree below
    POOL_MIN_DEGREE) and per target on pooled features."""
    dim = any_group.dim
    t = fastik.FieldType(any_group, FIELDS[dim])
    ref, fused = twins(t, t, hidden_channels=1)
    pos, ei = graph(9, 26, dim)
    x = torch.randn(9, t.dim, dtype=torch.float64, device=DEVICE)
    assert_same(ref, fused, dict(x=x, pos=pos, edge_index=ei))


def test_backward_over_many_chunks(monkeypatch):
    """The backward kernels' persistent programs take several chunks each (E = 150: five chunks of 32 edges over
    two programs in the interpreter, the last one partial), and the G-MLP's side runs in two waves (128 edges, then
    22, with grad_h̃ in a buffer of one wave's rows; WAVE_BYTES = 0: not lengthened for the pooled head): every
    gradient matches the reference."""
    from fastik.triton_kernels import gmlp_conv
    from fastik.triton_kernels.gmlp_conv import INTERPRET_CONFIG, WAVE_CHUNKS

    assert INTERPRET_CONFIG["head_bwd"]["CHUNK"] == INTERPRET_CONFIG["bwd"]["CHUNK"] == 32
    assert WAVE_CHUNKS * 32 * 2 == 128
    monkeypatch.setattr(gmlp_conv, "WAVE_BYTES", 0)
    t = fastik.FieldType(fastik.group("so3"), "1x0e + 1x1o")
    ref, fused = twins(t, t, hidden_channels=2)
    pos, ei = graph(20, 150, 3)
    x = torch.randn(20, t.dim, dtype=torch.float64, device=DEVICE)
    assert_same(ref, fused, dict(x=x, pos=pos, edge_index=ei))


def test_gpu_block_sizes_match_reference(pooled, monkeypatch):
    """The forward's MLP, the head kernel's grad_out rows and the backward's layers run on BLOCK_E = 32 edges at a
    time on a GPU (the interpreter's other tests on 16): with the GPU's block sizes and row blocks (BLOCK_E, KE;
    two MLP blocks per chunk, E = 150: several chunks over two programs, the last one partial) forward and every
    gradient match the reference, with either head."""
    from fastik.triton_kernels import gmlp_conv

    for name in ("fwd", "head_bwd", "bwd"):
        gpu = {k: v for k, v in gmlp_conv.GPU_CONFIG[name].items() if k in ("BLOCK_E", "KE")}
        monkeypatch.setitem(gmlp_conv.INTERPRET_CONFIG, name,
                            {**gmlp_conv.INTERPRET_CONFIG[name], **gpu, "CHUNK": 2 * max(gpu.values())})
    assert gmlp_conv.launch_config("fwd", 64)["BLOCK_E"] == gmlp_conv.launch_config("head_bwd", 64)["BLOCK_E"] == 32
    t = fastik.FieldType(fastik.group("so3"), "1x0e + 1x1o")
    ref, fused = twins(t, t, hidden_channels=2)
    pos, ei = graph(20, 150, 3)
    x = torch.randn(20, t.dim, dtype=torch.float64, device=DEVICE)
    assert_same(ref, fused, dict(x=x, pos=pos, edge_index=ei))


def test_head_chunk_does_not_change_the_gradients():
    """The head kernel's chunk (a tuning knob of gmlp_conv_bwd) changes the summation order only: of the head's
    gradient, grad_x and grad_env."""
    from fastik.triton_kernels.gmlp_conv import gmlp_conv_bwd

    t = fastik.FieldType(fastik.group("so3"), "1x0e + 1x1o")
    ref, _ = twins(t, t, hidden_channels=2)
    src, tgt, z, env, packed = op_inputs(ref, 20, 150)
    x, gout = (torch.randn(20, t.dim, dtype=torch.float64, device=DEVICE) for _ in range(2))
    grads = [gmlp_conv_bwd(gout, z, env, x, src, tgt, packed, "ieee", head_chunk=c) for c in (None, 16, 64)]
    for i in (1, 2, -1):  # grad_env, grad_x, the head's
        assert grads[0][i].abs().max() > 0
        assert all(relative_error(g[i], grads[0][i]) < 1e-13 for g in grads[1:])
    for bad in (8, 48):
        with pytest.raises(ValueError, match="chunk must be a power of two"):
            gmlp_conv_bwd(gout, z, env, x, src, tgt, packed, "ieee", head_chunk=bad)


def test_input_gradients_only_when_needed(pooled, monkeypatch):
    """The backward computes z's, env's and x's gradients only where asked (without need_z the first layer's input
    gradient is not computed, without need_env and need_x the per-edge sums s either comes from), returns an empty
    (0,) tensor for each of the others (no E-sized zeros) and every other gradient as it was, with either head; a
    layer asks only for what autograd needs: positions without a gradient, no z gradient (env's still: the
    envelope's width is a parameter), and x without one, no x gradient — and its other gradients match the
    reference."""
    from fastik.triton_kernels import gmlp_conv

    t = fastik.FieldType(fastik.group("so3"), "1x0e + 1x1o")
    ref, fused = twins(t, t, hidden_channels=2)
    src, tgt, z, env, packed = op_inputs(ref, 20, 150)
    x, gout = (torch.randn(20, t.dim, dtype=torch.float64, device=DEVICE) for _ in range(2))
    every = gmlp_conv.gmlp_conv_bwd(gout, z, env, x, src, tgt, packed, "ieee")
    assert all(g.abs().max() > 0 for g in every[:3])
    for needs in ((False, True, True), (True, True, False), (True, False, True), (False, False, False)):
        some = gmlp_conv.gmlp_conv_bwd(gout, z, env, x, src, tgt, packed, "ieee",
                                       **dict(zip(("need_z", "need_env", "need_x"), needs)))
        for a, b, wanted in zip(some, every, needs + (True,) * (len(every) - 3)):  # grad_z, _env, _x; parameters'
            assert relative_error(a, b) < 1e-13 if wanted and b.abs().max() > 0 else a.shape == (0,)
    asked = []
    bwd = gmlp_conv.gmlp_conv_bwd
    monkeypatch.setattr(gmlp_conv, "gmlp_conv_bwd", lambda *a, **k: asked.append(
        tuple(k[n] for n in ("need_z", "need_env", "need_x"))) or bwd(*a, **k))
    pos, ei = graph(20, 150, 3)
    for x_grad in (True, False):
        x.requires_grad_(x_grad)
        results = []
        for conv in (ref, fused):
            y = conv(x, pos, ei)
            wrt = [x] * x_grad + list(conv.parameters())
            results.append((y, torch.autograd.grad((y * gout).sum(), wrt, allow_unused=True)))
        (y_ref, g_ref), (y_fus, g_fus) = results
        assert asked.pop() == (False, True, x_grad) and relative_error(y_fus, y_ref) < TOL64
        assert_same_grads(g_fus, g_ref, int(x_grad), TOL64)


@pytest.mark.parametrize("needs", [(True, True, True), (False, True, False), (False, False, False)])
def test_backward_op_fake_has_the_real_shapes(needs):
    """The backward op's fake (what torch.compile traces) returns what the op returns: an input gradient not asked
    for is an empty (0,) tensor in both (``torch.library.opcheck``'s fake-tensor test)."""
    t = fastik.FieldType(fastik.group("so3"), "1x0e + 1x1o")
    ref, _ = twins(t, t, hidden_channels=2)
    src, tgt, z, env, _ = op_inputs(ref, 12, 40)
    p = pack_gmlp(ref.kernel, torch.float64)
    x, gout = (torch.randn(12, t.dim, dtype=torch.float64, device=DEVICE) for _ in range(2))
    args = (gout, z, env, x, src, tgt, None, list(p[:fg._TENSORS]), *p[fg._TENSORS:], "ieee", True, *needs, False)
    torch.library.opcheck(torch.ops.fastik.gmlp_conv_backward.default, args, test_utils=("test_faketensor",))
    grads = torch.ops.fastik.gmlp_conv_backward(*args)
    assert [tuple(g.shape) for g in grads[:3]] == [tuple(a.shape) if n else (0,) for a, n in zip((z, env, x), needs)]


def test_tile_lists_in_any_order(pooled):
    """The head's tile lists per output tile and per row tile come sorted (grad_h̃ holds a grad_out tile while
    consecutive tiles share it); listed in any other order, forward and gradients are the same up to round-off,
    with either head.  The lists per channel must stay in row-tile order (the pooled backward stores each row tile
    of G once: ``test_op_input_errors``)."""
    from fastik.triton_kernels.gmlp_conv import gmlp_conv_bwd, gmlp_conv_fwd

    tin, tout = (fastik.FieldType(fastik.group("so3"), f) for f in ("2x0e + 1x1o", "6x0e + 4x1o"))
    ref, _ = twins(tin, tout, hidden_channels=2)
    src, tgt, z, env, packed = op_inputs(ref, 20, 100)
    x = torch.randn(20, tin.dim, dtype=torch.float64, device=DEVICE)
    gout = torch.randn(20, tout.dim, dtype=torch.float64, device=DEVICE)
    shuffled = dict(packed)
    g = torch.Generator().manual_seed(3)
    changes = []
    for name in ("head_blocks", "head_row_blocks"):
        lists, counts = packed[name].clone(), packed[name.replace("blocks", "block_count")].tolist()
        for row, n in enumerate(counts):
            lists[row, :n] = lists[row, torch.randperm(n, generator=g)]
        shuffled[name] = lists
        tiles = lists // x.shape[1]  # head_blocks / head_row_blocks: each entry's tile index (k or t)
        changes.append(sum(int((t[1:n] != t[:n - 1]).sum()) for t, n in zip(tiles, counts)))
    assert changes[1] > packed["head_row_blocks"].shape[0], changes  # the held grad_out tile is reloaded often
    y, y_shuffled = (gmlp_conv_fwd(z, env, x, src, tgt, 20, tout.dim, p, "ieee") for p in (packed, shuffled))
    assert relative_error(y_shuffled, y) < 1e-13
    for a, b in zip(gmlp_conv_bwd(gout, z, env, x, src, tgt, shuffled, "ieee"),
                    gmlp_conv_bwd(gout, z, env, x, src, tgt, packed, "ieee")):
        assert relative_error(a, b) < 1e-13 if b.abs().max() > 0 else a.abs().max() == 0

ATTR_CASES = {  # group, dim, in, out, edge attributes, node attributes
    "so3-attrs": ("so3", 3, "2x0e + 1x1o", "1x0e + 1x1o + 1x2e", "2x0e + 1x1o", "1x0e + 1x1e"),
    "Oh-edge": ("Oh", 3, "1x0e + 1x1o", "2x0e", "1x0e", None),
    "D4-node": ("D4", 2, "2x0 + 1x1", "1x0- + 1x2", None, "1x0 + 1x1"),
}


@pytest.mark.parametrize("case", list(ATTR_CASES), ids=list(ATTR_CASES))
@pytest.mark.parametrize("bipartite", [False, True])
def test_attributes_and_bipartite(case, bipartite):
    """Edge and node attributes, bipartite graphs: forward, every gradient and, with forces in the loss, the
    second derivatives w.r.t. x, the attributes and every parameter."""
    group, dim, t_in, t_out, t_edge, t_node = ATTR_CASES[case]
    G = fastik.group(group, dim=dim)
    ft = lambda s: None if s is None else fastik.FieldType(G, s)
    a, b, ea, na = ft(t_in), ft(t_out), ft(t_edge), ft(t_node)
    ref, fused = twins(a, b, edge_attr_type=ea, node_attr_type=na, hidden_channels=2)
    n, m, e = 10, 7, 30
    pos, ei = graph(n, e, dim, self_loops=0 if bipartite else 3)
    g = torch.Generator().manual_seed(5)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(DEVICE)
    inputs = dict(x=rnd(n, a.dim), pos=pos, edge_index=ei)
    if ea is not None:
        inputs["edge_attr"] = rnd(e, ea.dim)
    if na is not None:
        inputs["node_attr"] = rnd(n, na.dim)
    if bipartite:
        inputs["edge_index"] = torch.stack([ei[0], ei[1] % m])
        inputs["pos_target"] = rnd(m, dim)
        if na is not None:
            inputs["node_attr_target"] = rnd(m, na.dim)
    assert_same(ref, fused, inputs)
    n_inputs = sum(torch.is_tensor(v) and v.is_floating_point() for v in inputs.values()) - 1  # not pos
    assert_same_grads(force_loss_grads(fused, inputs), force_loss_grads(ref, inputs), n_inputs, TOL64)


@pytest.mark.parametrize("kw", [dict(hidden_layers=0), dict(hidden_layers=1, norm=False),
                                dict(hidden_layers=3, sigma=None), dict(aggr="mean")],
                         ids=["no-hidden", "no-norm", "three-layers", "mean"])
def test_mlp_shapes(kw, pooled):
    """Layer counts and options, with either head: the pooled backward saves each layer's state (no hidden layer:
    nothing; without norm: c = a, rinv unused; three layers: the second and third inputs) and reads it back."""
    G = fastik.group("so3")
    t = fastik.FieldType(G, "2x0e + 1x1o")
    ref, fused = twins(t, t, hidden_channels=2, **kw)
    pos, ei = graph(8, 20, 3)
    assert_same(ref, fused, dict(x=torch.randn(8, t.dim, dtype=torch.float64, device=DEVICE), pos=pos,
                                 edge_index=ei))


def test_head_on_half_of_the_padded_width():
    """z (K0 = 9), the layers' inputs (H = 27) and h̃ (H + 1 = 28) fit in the lower half of P = 64 (set by the
    gate's wider layer output, 33): the layers, the head and their backward read IN_K = 32 columns only; the
    other tests run IN_K = P."""
    from fastik.triton_kernels.gmlp_conv import used_columns
    G = fastik.group("so3")
    t = fastik.FieldType(G, "2x1o")
    ref, fused = twins(t, t, hidden_channels=3)
    packed = fused.kernel.packed(torch.float64)
    p = packed.weight.shape[1]
    assert (p, packed.hidden + 1, used_columns(p, fused.kernel.input_type.dim, packed.hidden)) == (64, 28, 32)
    pos, ei = graph(8, 20, 3)
    assert_same(ref, fused, dict(x=torch.randn(8, t.dim, dtype=torch.float64, device=DEVICE), pos=pos,
                                 edge_index=ei))


@pytest.mark.parametrize("hidden_channels", [6, 10, 16], ids=["P128", "P256", "P256-IN_K256"])
def test_wide_mlp_matches_reference(hidden_channels):
    """Wider G-MLPs (IN_K = 128 at P = 128 and at P = 256; IN_K = 256, the default width, where z's gradient comes
    from 32 of its columns in IEEE): the staged dots read several slices, the layer weight gradients come in several
    tiles and atomic groups, the head gradient in two row tiles — forward and every gradient against the reference
    over several chunks and both programs."""
    from fastik.triton_kernels.gmlp_conv import used_columns
    t = fastik.FieldType(fastik.group("so3"), "1x0e + 1x1o")
    ref, fused = twins(t, t, hidden_channels=hidden_channels)
    packed = fused.kernel.packed(torch.float64)
    p = packed.weight.shape[1]
    assert (p, used_columns(p, fused.kernel.input_type.dim, packed.hidden)) == \
        {6: (128, 128), 10: (256, 128), 16: (256, 256)}[hidden_channels]
    pos, ei = graph(12, 70, 3)
    assert_same(ref, fused, dict(x=torch.randn(12, t.dim, dtype=torch.float64, device=DEVICE), pos=pos,
                                 edge_index=ei))


def forward(conv, inputs):
    with torch.no_grad():
        return conv(**inputs)


def test_pooled_waves_give_every_program_a_block(monkeypatch):
    """The pooled kernels' waves: the base wave (two chunks per program: 128 edges in the interpreter, two programs)
    at a low in-degree; at a high one long enough for a block of TB targets per program, in whole chunks; never more
    than WAVE_BYTES of buffers unless the base wave alone needs more."""
    from fastik.triton_kernels import gmlp_conv

    x, meta = torch.empty(1, 4), {"IN_K": 64}
    tb = gmlp_conv.launch_config("pool_bwd", 64)["TB"]
    assert (tb, gmlp_conv._wave(x, meta), gmlp_conv._programs(x, 1)) == (16, 128, 2)
    for name in ("pool", "pool_bwd"):
        assert gmlp_conv._pooled_wave(x, meta, name, 2.5, 4) == 128  # 2 · 16 · 2.5 = 80 edges: the base wave
        assert gmlp_conv._pooled_wave(x, meta, name, 7.5, 4) == 256  # 240, in chunks of 32
        assert gmlp_conv._pooled_wave(x, meta, name, 16, 4) == 512
        monkeypatch.setattr(gmlp_conv, "WAVE_BYTES", 224 * 4 + 3)
        assert gmlp_conv._pooled_wave(x, meta, name, 16, 4) == 224  # the buffers' bytes, in whole chunks
        monkeypatch.setattr(gmlp_conv, "WAVE_BYTES", 0)
        assert gmlp_conv._pooled_wave(x, meta, name, 16, 4) == 128  # never below the base
        monkeypatch.undo()


@pytest.mark.parametrize("bipartite,targets_per_block", [(False, 16), (True, 16), (False, 32)],
                         ids=["graph", "bipartite", "graph-TB32"])
def test_pooled_head_over_waves_hubs_and_channel_tiles(bipartite, targets_per_block, monkeypatch):
    """The pooled head on a graph that crosses its every boundary: 150 edges in random order, so two waves of 128
    edges in the interpreter (WAVE_BYTES = 0: waves not lengthened by the in-degree); a hub target with 40 edges
    (three blocks of KE = 16, over both waves), isolated targets and self-loops; 18 input and output channels (two
    channel tiles of CT = 16, two output tiles of the head with different rows: ``head_row_flags``) — against the
    reference (forward and every gradient, pooled and, once, edge-wise) and against the edge-wise head; also with
    blocks of TB = 32 targets (a GPU variant that bench/gpu_check.py times)."""
    from fastik.triton_kernels import gmlp_conv

    assert gmlp_conv.INTERPRET_CONFIG["pool"]["CT"] == gmlp_conv.INTERPRET_CONFIG["pool_bwd"]["CT"] == 16
    for name in ("pool", "pool_bwd"):
        monkeypatch.setitem(gmlp_conv.INTERPRET_CONFIG, name,
                            {**gmlp_conv.INTERPRET_CONFIG[name], "TB": targets_per_block})
    assert gmlp_conv.WAVE_CHUNKS * 32 * 2 == 128
    monkeypatch.setattr(gmlp_conv, "WAVE_BYTES", 0)
    t = fastik.FieldType(fastik.group("so3"), "6x0e + 4x1o")
    ref, fused = twins(t, t, hidden_channels=2)
    flags = fused.kernel.packed(torch.float64).head_row_flags.bool()
    assert (flags[..., 0] & ~flags[..., 1]).any()  # output tile 0 has rows tile 1 has not
    n, m = 20, 12 if bipartite else 20
    pos, ei = graph(n, 150, 3, self_loops=0 if bipartite else 3)
    ei[1, 20:60] = 4  # the hub
    ei = ei[:, torch.randperm(150, generator=torch.Generator().manual_seed(3)).to(DEVICE)]
    inputs = dict(x=torch.randn(n, t.dim, dtype=torch.float64, device=DEVICE), pos=pos, edge_index=ei)
    if bipartite:
        inputs["edge_index"] = torch.stack([ei[0], ei[1] % m])
        inputs["pos_target"] = torch.randn(m, 3, dtype=torch.float64, device=DEVICE)
    assert gmlp_conv.pools(150, m) and torch.bincount(inputs["edge_index"][1]).max() >= 40
    assert_same(ref, fused, inputs)
    y_pooled = forward(fused, inputs)
    monkeypatch.setattr(gmlp_conv, "POOL_MIN_DEGREE", float("inf"))
    assert relative_error(y_pooled, forward(fused, inputs)) < TOL64
    if targets_per_block == 16 and not bipartite:  # the edge-wise head's kernels on the two output tiles too
        assert_same(ref, fused, inputs)


def test_pooled_head_gradient_on_per_program_copies(monkeypatch):
    """The pooled backward sums the head's gradient in a copy per program on the listed tiles (no atomics) and
    adds the copies' sum on the head's support, tile n at the n-th entry of the lists per output tile
    (``_add_listed_tiles``); their count, Σ head_block_count, is a host sync on CUDA: ``_listed_tiles`` reads it
    once and keeps it with the tiles' coordinates and support while the count tensor comes with the same lists and
    support and the three keep their versions (an in-place edit of any of them, or other lists: read again)."""
    from fastik.triton_kernels import gmlp_conv

    tin, tout = (fastik.FieldType(fastik.group("so3"), f) for f in ("2x0e + 1x1o", "6x0e + 4x1o"))
    ref, _ = twins(tin, tout, hidden_channels=2)
    *_, packed = op_inputs(ref, 20, 100)
    counts = packed["head_block_count"]
    n = int(counts.sum())
    sums = []
    monkeypatch.setattr(torch.Tensor, "sum", lambda t, *a, _m=torch.Tensor.sum, **k: sums.append(1) or _m(t, *a, **k))
    assert gmlp_conv._listed_tiles(packed)[0] == gmlp_conv._listed_tiles(packed)[0] == n and len(sums) == 1
    for name in ("head_block_count", "head_blocks", "head_support"):
        packed[name].add_(0)
        assert gmlp_conv._listed_tiles(packed)[0] == n
    assert len(sums) == 4
    flipped = dict(packed, head_blocks=packed["head_blocks"].flip(1).add_(0))  # other lists, the same version (1)
    assert flipped["head_blocks"]._version == packed["head_blocks"]._version
    _, (_, _, t), _ = gmlp_conv._listed_tiles(flipped)
    assert len(sums) == 5 and torch.equal(t, gmlp_conv._listed_tiles(packed)[1][2]) and len(sums) == 6
    monkeypatch.undo()
    tiles = torch.arange(1.0, n + 1, dtype=torch.float64, device=DEVICE)[:, None, None].expand(n, 16, 16)
    ghead = torch.ones_like(packed["head"])
    gmlp_conv._add_listed_tiles(ghead, tiles, packed)
    expected, at, din = torch.zeros_like(ghead), 0, ghead.shape[0]
    for t, count in enumerate(counts.tolist()):
        for kc in packed["head_blocks"][t, :count].tolist():
            at += 1
            expected[kc % din, kc // din * 16:kc // din * 16 + 16, 16 * t:16 * t + 16] = at
    assert 0 < packed["head_support"].double().mean() < 1
    assert torch.equal(ghead, 1 + expected * packed["head_support"])


def test_no_edges_and_csr():
    G = fastik.group("o3")
    t = fastik.FieldType(G, "1x0e + 1x1o")
    ref, fused = twins(t, t, hidden_channels=2)
    x = torch.randn(5, t.dim, dtype=torch.float64, device=DEVICE)
    pos = torch.randn(5, 3, dtype=torch.float64, device=DEVICE)
    empty = torch.zeros(2, 0, dtype=torch.long, device=DEVICE)
    assert_same(ref, fused, dict(x=x, pos=pos, edge_index=empty))
    _, ei = graph(5, 12, 3, isolated=1)
    csr = fastik.ops.build_csr(ei[1], 5)
    assert_same(ref, fused, dict(x=x, pos=pos, edge_index=ei, csr=csr))
    with pytest.raises(ValueError):  # a CSR of another graph is refused
        fused(x, pos, ei, csr=fastik.ops.build_csr((ei[1] + 1) % 5, 5))


def test_csr_order_is_not_sorted_again(pooled, monkeypatch):
    """With a csr the fused layer takes the edges in its order and passes their row pointer: the op does not sort
    them, forward or backward, and forward and every gradient (the edge attributes' too) match the reference, with
    either head.  The op refuses a row pointer of edges that are not sorted by target, or not theirs."""
    from fastik.ops.aggregate import csr_rowptr
    from fastik.triton_kernels import gmlp_conv

    G = fastik.group("so3")
    t, a = fastik.FieldType(G, "1x0e + 1x1o"), fastik.FieldType(G, "1x0e + 1x1o")
    ref, fused = twins(t, t, edge_attr_type=a, hidden_channels=2)
    pos, ei = graph(20, 150, 3)
    x = torch.randn(20, t.dim, dtype=torch.float64, device=DEVICE)
    attr = torch.randn(150, a.dim, dtype=torch.float64, device=DEVICE)
    csr = fastik.ops.build_csr(ei[1], 20)
    sort, sorts = gmlp_conv._by_target, []
    monkeypatch.setattr(gmlp_conv, "_by_target", lambda *args: sorts.append(args[-1]) or sort(*args))
    assert_same(ref, fused, dict(x=x, pos=pos, edge_index=ei, edge_attr=attr, csr=csr))
    assert len(sorts) == (2 if pooled else 0) and all(rowptr is not None for rowptr in sorts)
    src, tgt = ei
    r = pos[src] - pos[tgt]
    z, env, p = fused.kernel.embed(r, attr, None, None), fused.kernel.envelope(r), fused.kernel.packed(torch.float64)
    rowptr, perm = csr_rowptr(tgt, 20), csr.perm
    with pytest.raises(ValueError, match="sorted"):  # the edges in their own order
        fused_gmlp_conv(z, env, x, p, src, tgt, 20, tgt_rowptr=rowptr)
    with pytest.raises(ValueError, match="sorted"):  # not their row pointer
        fused_gmlp_conv(z[perm], env[perm], x, p, src[perm], tgt[perm], 20, tgt_rowptr=rowptr.flip(0))
    with pytest.raises(ValueError, match="tgt_rowptr"):
        fused_gmlp_conv(z[perm], env[perm], x, p, src[perm], tgt[perm], 20, tgt_rowptr=rowptr[1:])


@pytest.mark.parametrize("hidden_channels,precision", [(2, "ieee"), (5, "tf32"), (6, "tf32"), (16, "tf32")])
def test_float32_within_fp32_round_off(hidden_channels, precision):
    """float32 against the float64 reference; in TF32 (the interpreter multiplies in fp32) the staged dots read
    32 columns at a time, so that at P = 128 their padding bound (80 or 112 output columns, 80 input rows at 6
    hidden channels) is rounded up to a multiple of 32, and at the default width z's gradient comes from 128 of
    IN_K = 256 columns (32 in IEEE)."""
    from fastik.triton_kernels.gmlp_conv import _meta

    G = fastik.group("so3")
    t = fastik.FieldType(G, "4x0e + 2x1o")
    ref, fused = twins(t, t, hidden_channels=hidden_channels)
    fused.precision = precision
    meta = _meta(fused.kernel.packed(torch.float32)._asdict(), fused.kernel.input_type.dim, precision)
    assert hidden_channels in (2, 16) or (meta["PU"] % 32, meta["P"]) == (16, 128)
    pos, ei = graph(12, 60, 3)
    x = torch.randn(12, t.dim, dtype=torch.float64, device=DEVICE)
    y64, g64 = outputs_and_grads(ref, dict(x=x, pos=pos, edge_index=ei))
    y32, g32 = outputs_and_grads(fused.float(), dict(x=x.float(), pos=pos.float(), edge_index=ei))
    assert y32.dtype == torch.float32
    assert relative_error(y32.double(), y64) < 1e-5
    assert_same_grads([g.double() for g in g32], g64, 2, 1e-5)


def test_double_backward_in_chunks(monkeypatch, pooled):
    """Second derivatives of the op (every first-order output with a random cotangent, grad_out differentiable
    too) equal packed_conv_reference's, taken over chunks of a few edges — consecutive edges through
    packed_conv_reference, or pooled (packed_conv_pooled) on whole targets' edges, or pieces of a target too large
    for the budget; no tensor of the double backward has E·Din·Dout elements (packed_conv_reference's, whole, has)."""
    G = fastik.group("so3")
    t = fastik.FieldType(G, "2x0e + 2x1o")
    conv = fastik.ImplicitPointConv(t, t, hidden_channels=2).to(DEVICE, torch.float64)
    p = pack_gmlp(conv.kernel, torch.float64)
    n, e = 10, 96  # E·Din·Dout above twice the per-chunk copies of the weights (2 048 values)
    pos, ei = graph(n, e, 3)
    z = conv.kernel.embed(pos[ei[0]] - pos[ei[1]], None, None, None).detach().requires_grad_()
    env = torch.rand(e, dtype=torch.float64, device=DEVICE, requires_grad=True)
    x = torch.randn(n, t.dim, dtype=torch.float64, device=DEVICE, requires_grad=True)
    gy = torch.randn(n, t.dim, dtype=torch.float64, device=DEVICE, requires_grad=True)
    params = [getattr(p, k).detach().requires_grad_() for k in fg.TRAINED]
    packed = p._replace(**dict(zip(fg.TRAINED, params)))
    wrt = [z, env, x, *params]
    cots = [torch.randn_like(v) for v in wrt]

    def second(op):
        firsts = torch.autograd.grad(op(z, env, x, packed, ei[0], ei[1], n), wrt, gy, create_graph=True)
        return torch.autograd.grad(sum((f * c).sum() for f, c in zip(firsts, cots)), [gy, *wrt])

    dense = t.dim * t.dim * e
    with LargestTensor() as mode:
        expected = second(packed_conv_reference)
    assert mode.numel >= dense
    act, per_target = p.weight.shape[1] * (p.layers + 2), p.weight.shape[1] * t.dim  # pooled: P × Din per target
    calls, statement = [], fg.packed_conv_pooled
    monkeypatch.setattr(fg, "packed_conv_pooled", lambda *a: calls.append(a[-1]) or statement(*a))
    # per edge: chunks of e / 6 edges; pooled: whole targets, ≈ 3 per chunk, or (cut) pieces of 5 edges
    budgets = [30 * act + 3 * per_target, 5 * act + per_target] if pooled else [(act + t.dim ** 2) * e // 6]
    for budget in budgets:
        calls.clear()
        monkeypatch.setattr(fg, "DOUBLE_BACKWARD_FLOATS", budget)
        with LargestTensor(ignore=[v.shape for v in params]) as mode:  # the parameters' gradients are not per edge
            found = second(fused_gmlp_conv)
        assert mode.numel < dense / 2, f"{mode.op} created a tensor of {mode.numel} elements"
        for a, b in zip(found, expected):
            assert relative_error(a, b) < TOL64
        assert sum(d * n for runs in calls for d, n in runs) == (e if pooled else 0)  # every edge once
        costs = [sum(d * n for d, n in runs) * act + sum(n for _, n in runs) * per_target for runs in calls]
        assert all(c <= budget for c in costs), (costs, budget)
        assert len(calls) > (3 if pooled else -1)
    assert pooled <= any(runs == [(5, 1)] for runs in calls)  # a target cut into pieces


def test_double_backward_bipartite(pooled):
    """Second derivatives on a bipartite graph (7 sources, 12 targets of which 4 have no edge, in-degree ≈ 6 on
    the others) equal packed_conv_reference's, with either statement of the op in the double backward."""
    G = fastik.group("so3")
    t_in, t_out = fastik.FieldType(G, "1x0e + 1x1o"), fastik.FieldType(G, "2x0e + 1x1o")
    conv = fastik.ImplicitPointConv(t_in, t_out, hidden_channels=2).to(DEVICE, torch.float64)
    p = pack_gmlp(conv.kernel, torch.float64)
    g = torch.Generator().manual_seed(5)
    src, tgt = (torch.randint(0, k, (48,), generator=g).to(DEVICE) for k in (7, 8))

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(DEVICE)

    z = conv.kernel.embed(draw(48, 3)).detach().requires_grad_()
    env, x, gy = (v.requires_grad_() for v in (draw(48).abs(), draw(7, t_in.dim), draw(12, t_out.dim)))
    wrt = [z, env, x]
    cots = [draw(*v.shape) for v in wrt]

    def second(op):
        firsts = torch.autograd.grad(op(z, env, x, p, src, tgt, 12), wrt, gy, create_graph=True)
        return torch.autograd.grad(sum((f * c).sum() for f, c in zip(firsts, cots)), [gy, *wrt])

    for a, b in zip(second(fused_gmlp_conv), second(packed_conv_reference)):
        assert b.abs().max() > 0 and relative_error(a, b) < TOL64


def test_fourier_elu_runs_unfused():
    G = fastik.group("so2", dim=2)
    t = fastik.FieldType(G, "2x0 + 1x1")
    ref, fused = twins(t, t, dtype=torch.float32, hidden_channels=2, nonlinearity="fourier_elu")
    assert not fusable(fused.kernel)  # runs as backend="triton" (float32 only)
    pos, ei = graph(8, 20, 2, dtype=torch.float32)
    assert_same(ref, fused, dict(x=torch.randn(8, t.dim, device=DEVICE), pos=pos, edge_index=ei), tol=1e-5)
    with pytest.raises(ValueError, match="gate"):
        pack_gmlp(fused.kernel, torch.float64)


def test_packed_reference_is_the_kernel_math():
    """packed_conv_reference (the torch statement of the kernel) equals the layer's reference path."""
    G = fastik.group("Ih")
    t = fastik.FieldType(G, "2x0e + 1x1o")
    ref, _ = twins(t, t, hidden_channels=2)
    pos, ei = graph(8, 20, 3)
    x = torch.randn(8, t.dim, dtype=torch.float64, device=DEVICE)
    src, tgt = ei
    r = pos[src] - pos[tgt]
    k = ref.kernel
    y = packed_conv_reference(k.embed(r), k.envelope(r) * ref.scale, x, pack_gmlp(k, torch.float64), src, tgt, 8)
    y_ref = ref(x, pos, ei)
    assert relative_error(ref.bias(y) if ref.bias is not None else y, y_ref) < 1e-13


def test_packed_gradients_live_on_the_supports():
    """The op's gradients w.r.t. the packed weight and head equal packed_conv_reference's, which uses them through
    their supports: zero on the structural zeros, where the kernels add no atomics (a few % of the entries are
    support: the parameter atomics per edge shrink by that factor)."""
    G = fastik.group("so3")
    t = fastik.FieldType(G, "1x0e + 1x1o")
    ref, _ = twins(t, t, hidden_channels=2)
    k = ref.kernel
    packed = pack_gmlp(k, torch.float64)
    assert packed.head_support.dtype == packed.weight_support.dtype == torch.uint8  # a byte per entry to read
    assert 0 < packed.head_support.double().mean() < 0.5 and 0 < packed.weight_support.double().mean() < 0.5
    assert (packed.head * (1 - packed.head_support)).abs().max() == 0
    assert (packed.weight * (1 - packed.weight_support)).abs().max() == 0
    pos, (src, tgt) = graph(10, 60, 3)
    r = pos[src] - pos[tgt]
    z, env = k.embed(r).detach(), (k.envelope(r) * ref.scale).detach()
    x, gout = (torch.randn(10, t.dim, dtype=torch.float64, device=DEVICE) for _ in range(2))
    grads = []
    for conv in (fused_gmlp_conv, packed_conv_reference):
        w, head = (packed.weight.detach().clone().requires_grad_(), packed.head.detach().clone().requires_grad_())
        y = conv(z, env, x, packed._replace(weight=w, head=head), src, tgt, 10)
        grads.append(torch.autograd.grad(y, (w, head), gout))
    for (g_fused, g_ref), support in zip(zip(*grads), (packed.weight_support, packed.head_support)):
        assert g_ref.abs().max() > 0 and (g_ref * (1 - support)).abs().max() == 0
        assert relative_error(g_fused, g_ref) < 1e-12


class _NoLaunch:
    """Stands in for a Triton kernel and counts its launches, which do nothing: kernels allocate no tensor, so
    the torch side's allocations are those of a real run (the interpreter would take minutes at this E)."""

    def __init__(self) -> None:
        self.launches = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs) -> None:
            self.launches += 1
        return launch


def test_no_edge_times_width_tensor(pooled, monkeypatch):
    """Forward + backward of the fused path create nothing of ≥ 16·E elements (inputs: E·(dim + attr dim)),
    outside its custom ops or inside them (their bodies run under the mode: outputs, scratch, the wave buffers of
    h1 and grad_h̃, the edges sorted by target), with either head."""
    from fastik.triton_kernels import gmlp_conv
    heads = ("_gmlp_pool_fwd_kernel", "_gmlp_pool_bwd_kernel") if pooled else \
        ("_gmlp_conv_fwd_kernel", "_gmlp_head_bwd_kernel", "_gmlp_grad_h_kernel")
    stubs = {}
    if DEVICE == "cpu":  # the interpreter copies its arguments' storages: no launches under the mode
        stubs = {name: _NoLaunch() for name in heads + ("_gmlp_rows_kernel", "_gmlp_conv_bwd_kernel")}
        for name, stub in stubs.items():
            monkeypatch.setattr(gmlp_conv, name, stub)
    G = fastik.group("so3")
    ft = fastik.FieldType(G, "2x0e + 2x1o")
    conv = fastik.ImplicitPointConv(ft, ft, edge_attr_type=fastik.FieldType(G, "1x0e"), hidden_channels=2,
                                    backend="fused").to(DEVICE)
    assert conv.kernel.hidden_type.dim + 1 > 16 and ft.dim * ft.dim > 16 and conv.kernel.input_type.dim < 16
    n, e = 400, 6400  # the interpreter's wave buffers: 128 rows, 512 at in-degree 16 pooled (saved states: × 160)
    pos = torch.randn(n, 3, device=DEVICE)
    x = torch.randn(n, ft.dim, device=DEVICE, requires_grad=True)
    ei = torch.randint(0, n, (2, e), device=DEVICE)
    with OutputSizes(op_bodies()) as rec:
        y = conv(x, pos, ei, edge_attr=torch.randn(e, 1, device=DEVICE))
        y.pow(2).sum().backward()
    op, numel = rec.largest()
    assert numel < 16 * e, f"{op} created a tensor of {numel} elements (E = {e})"
    assert "aten.empty.memory_format" in {f for f, _ in rec.records}  # the bodies' scratch was seen
    assert x.grad is not None and all(p.grad is not None for p in conv.kernel.parameters())
    assert all(stub.launches > 0 for stub in stubs.values()), {k: v.launches for k, v in stubs.items()}


def test_op_input_errors():
    G = fastik.group("so3")
    t = fastik.FieldType(G, "1x0e + 1x1o")
    conv = fastik.ImplicitPointConv(t, t, hidden_channels=1, backend="fused").double()
    p = pack_gmlp(conv.kernel, torch.float64)
    z, env = torch.randn(4, conv.kernel.input_type.dim, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    x = torch.randn(3, t.dim, dtype=torch.float64)
    idx = torch.tensor([0, 1, 2, 0])
    with pytest.raises(IndexError):
        fused_gmlp_conv(z, env, x, p, idx, idx + 1, 3)
    with pytest.raises(ValueError, match="env"):
        fused_gmlp_conv(z, env[:3], x, p, idx, idx, 3)
    with pytest.raises(ValueError, match="float32"):
        fused_gmlp_conv(z.float(), env, x, p, idx, idx, 3)
    with pytest.raises(ValueError, match="precision"):
        fused_gmlp_conv(z, env, x, p, idx, idx, 3, precision="fp16")
    bad = [p._replace(out_cols=torch.zeros_like(p.out_cols))]
    for blocks, counts in zip(HEAD_TILE_LISTS[::2], HEAD_TILE_LISTS[1::2]):
        bad_block = getattr(p, blocks).clone()
        bad_block[0, 0] = bad_block.shape[1]  # a tile past the head
        bad_count = getattr(p, counts).clone()
        bad_count[0] = bad_block.shape[1] + 1  # more tiles than the head has
        bad += [p._replace(**{blocks: bad_block}), p._replace(**{counts: bad_count})]
    beyond = p.head.shape[1] // HEAD_TILE - 1  # a row tile in range, but past h̃'s H + 1 columns
    assert beyond * HEAD_TILE > p.hidden
    for blocks, k in (("head_blocks", beyond * t.dim), ("head_channel_blocks", beyond * p.head.shape[2] // HEAD_TILE)):
        assert getattr(p, blocks.replace("blocks", "block_count"))[0] > 0
        listed = getattr(p, blocks).clone()
        listed[0, 0] = k
        bad.append(p._replace(**{blocks: listed}))
    swapped, two = p.head_channel_blocks.clone(), p.head_channel_block_count.clone()
    swapped[0, :2], two[0] = torch.tensor([1, 0]), 2  # channel 0 lists row tile 0's output tiles 1, then 0
    bad.append(p._replace(head_channel_blocks=swapped, head_channel_block_count=two))
    below = p.gate_columns.clone()
    below[0, 1] = p.hidden - 1  # a gate's scalar among the hidden features: the gates' gather reads unstaged columns
    bad.append(p._replace(gate_columns=below))
    for packed in bad:
        with pytest.raises(IndexError, match="head_blocks"):
            fused_gmlp_conv(z, env, x, packed, idx, idx, 3)
    for name in HEAD_TILE_LISTS:
        with pytest.raises(ValueError, match=name):
            fused_gmlp_conv(z, env, x, p._replace(**{name: getattr(p, name)[:-1]}), idx, idx, 3)
    with pytest.raises(ValueError, match="out_cols"):
        fused_gmlp_conv(z, env, x, p._replace(out_cols=p.out_cols.int()), idx, idx, 3)
    with pytest.raises(ValueError, match="head_support is torch.float64"):  # the kernels read it as bytes
        fused_gmlp_conv(z, env, x, p._replace(head_support=p.head_support.to(x.dtype)), idx, idx, 3)


def test_frozen_parameters_forces_only(pooled):
    """Forces of a frozen model (MD inference): only ∂/∂pos is asked for; the parameter gradients are skipped
    (no head-gradient kernel or phase) and the forces equal the reference's, with either head (40 targets: three
    blocks of 16 over the interpreter's two programs, so one program reuses its scratch)."""
    G = fastik.group("so3")
    t = fastik.FieldType(G, "2x0e + 1x1o")
    ref, fused = twins(t, fastik.FieldType(G, "1x0e"), hidden_channels=2)
    for conv in (ref, fused):
        conv.requires_grad_(False)
    pos, ei = graph(40, 120, 3)
    x = torch.randn(40, t.dim, dtype=torch.float64, device=DEVICE)
    forces = []
    for conv in (fused, ref):
        p = pos.detach().clone().requires_grad_()
        forces.append(-torch.autograd.grad(conv(x, p, ei).sum(), p)[0])
    assert relative_error(forces[0], forces[1]) < TOL64
    assert all(q.grad is None for q in fused.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("hidden_channels", [5, 16], ids=["P128", "P256"])
@pytest.mark.parametrize("precision", ["tf32x3", "ieee"])
def test_cuda_standard_workload_against_float64(hidden_channels, precision):
    """The compiled kernels at the standard fields (P = 128 and 256): fp32 output and every gradient within
    fp32 round-off of the float64 reference, 20 000 edges."""
    G = fastik.group("so3")
    t = fastik.FieldType(G, "16x0e + 16x1o")
    ref, fused = twins(t, t, hidden_channels=hidden_channels)
    fused = fused.float()
    fused.precision = precision
    pos, ei = graph(1250, 20_000, 3)
    x = torch.randn(1250, t.dim, dtype=torch.float64, device=DEVICE)
    y64, g64 = outputs_and_grads(ref, dict(x=x, pos=pos, edge_index=ei))
    y32, g32 = outputs_and_grads(fused, dict(x=x.float(), pos=pos.float(), edge_index=ei))
    assert relative_error(y32.double(), y64) < 1e-5
    assert_same_grads([g.double() for g in g32], g64, 2, 1e-4)


def force_loss_grads(conv, inputs: dict):
    """The gradients of Σ forces² (forces = -∂Σy/∂pos, a second derivative through the layer) w.r.t. every other
    float input and every parameter."""
    inputs = {k: v.detach().clone().requires_grad_() if torch.is_tensor(v) and v.is_floating_point() else v
              for k, v in inputs.items()}
    forces = -torch.autograd.grad(conv(**inputs).sum(), inputs["pos"], create_graph=True)[0]
    wrt = [v for k, v in inputs.items() if k != "pos" and torch.is_tensor(v) and v.requires_grad]
    return torch.autograd.grad(forces.pow(2).sum(), wrt + list(conv.parameters()), allow_unused=True)


def test_forces_in_loss_on_every_group(any_group, pooled):
    """Forces in the loss on every group of the table, mixed field types, with either statement of the op in the
    double backward: the gradients w.r.t. x and every parameter equal the reference's (no self-loops: r = 0 has no
    derivative; two isolated nodes), and are zero without edges."""
    dim = any_group.dim
    t = fastik.FieldType(any_group, FIELDS[dim])
    ref, fused = twins(t, t, hidden_channels=1)
    pos, ei = graph(9, 26, dim, self_loops=0)
    x = torch.randn(9, t.dim, dtype=torch.float64, device=DEVICE)
    for edges in (ei[:, ei[0] != ei[1]], ei[:, :0]):
        inputs = dict(x=x, pos=pos, edge_index=edges)
        expected = force_loss_grads(ref, inputs)
        assert_same_grads(force_loss_grads(fused, inputs), expected, 1, TOL64)
        assert (max(g.abs().max() for g in expected if g is not None) > 0) == (edges.shape[1] > 0)


@pytest.mark.parametrize("hidden_channels", [1, 5])
def test_packed_padding_beyond_the_dots_bounds(any_group, hidden_channels):
    """The kernels' dots stop at PU columns of a layer's linear part and HU rows of a later layer's weight
    (``output_columns``, ``input_columns``): every packed matrix they multiply is zero beyond, and the gate
    scalars lie before PU and after the H hidden features (the gates' gather stages from HU - 16 on) — on every
    group of the table."""
    from fastik.triton_kernels.gmlp_conv import _gate_start, _meta

    t = fastik.FieldType(any_group, FIELDS[any_group.dim])
    kernel = fastik.ImplicitPointConv(t, t, hidden_channels=hidden_channels, backend="fused").kernel
    p = pack_gmlp(kernel, torch.float64)
    meta = _meta(p._asdict(), kernel.input_type.dim, "ieee")
    pu, hu = meta["PU"], meta["HU"]
    assert pu % 16 == 0 and hu % 16 == 0 and pu <= meta["P"] and hu <= meta["IN_K"]
    assert not p.weight[:, :, pu:].any() and not p.weight[1:, hu:, :].any() and not p.bias[:, pu:].any()
    for rows in (p.mean, p.avg):  # (L, P, NB): the norms' sums
        assert not rows[:, pu:].any()
    for cols in (p.expand, p.gate_expand):  # (L, NB / NG, P): their transposes in the backward's sums
        assert not cols[:, :, pu:].any()
    assert int(p.gate_columns.max()) < pu
    assert int(p.gate_columns.min()) >= p.hidden > _gate_start(hu)
    assert not p.gate_pick[:, :p.hidden].any()  # no gate scalar among the hidden features


@pytest.mark.parametrize("hidden_channels", [1, 5])
def test_weight_slabs_flag_what_the_kernels_read(any_group, hidden_channels):
    """``weight_slabs`` as read by the kernels — ``[l, 0, s, c]`` for column c of rows 16s… of weight[l] (u @ W),
    ``[l, 1, s, n]`` for row n of its columns 16s… (da @ Wᵀ) — flags every segment that meets the support and only
    those, so that the segments the kernels skip are zero, on every group of the table."""
    t = fastik.FieldType(any_group, FIELDS[any_group.dim])
    kernel = fastik.ImplicitPointConv(t, t, hidden_channels=hidden_channels, backend="fused").kernel
    p = pack_gmlp(kernel, torch.float64)
    layers, size, _ = p.weight.shape
    assert p.weight_slabs.dtype == torch.uint8 and p.weight_slabs.shape == (layers, 2, size // HEAD_TILE, size)
    support = p.weight_support.bool()
    read = (p.weight_slabs[:, 0].bool().repeat_interleave(HEAD_TILE, 1),  # [l, row, column]
            p.weight_slabs[:, 1].bool().repeat_interleave(HEAD_TILE, 1).transpose(1, 2))
    for mask in read:
        assert not (p.weight * ~mask).any() and not (support & ~mask).any()  # nothing non-zero skipped
    for side, segments in ((0, support.reshape(layers, size // HEAD_TILE, HEAD_TILE, size).any(2)),
                           (1, support.reshape(layers, size, size // HEAD_TILE, HEAD_TILE).any(3).transpose(1, 2))):
        assert not (p.weight_slabs[:, side].bool() & ~segments).any()  # nothing flagged without a support entry


@pytest.mark.parametrize("hidden_channels", [1, 5])
def test_structure_slabs_flag_what_the_kernels_read(any_group, hidden_channels):
    """``structure_slabs[l, s]`` flags the norm blocks (first NB) and the gates (next NG) with a component among
    16s, …, 16s + 15: the slabs of mean, avg, expandᵀ and gate_expandᵀ the kernels read. Every entry of those
    matrices in a slab is in a flagged block / gate, and every flagged one has an entry of expand / gate_expand
    there — on every group of the table."""
    t = fastik.FieldType(any_group, FIELDS[any_group.dim])
    kernel = fastik.ImplicitPointConv(t, t, hidden_channels=hidden_channels, backend="fused").kernel
    p = pack_gmlp(kernel, torch.float64)
    layers, size, nb = p.mean.shape
    ng = p.gate_pick.shape[2]
    assert p.structure_slabs.dtype == torch.uint8 and p.structure_slabs.shape == (layers, size // HEAD_TILE, nb + ng)
    flags = p.structure_slabs.bool().repeat_interleave(HEAD_TILE, 1)  # [l, component, block or gate]
    blocks, gates = flags[..., :nb], flags[..., nb:]
    for m in (p.mean, p.avg, p.expand.transpose(1, 2)):  # (L, P, NB)
        assert not (m * ~blocks).any()
    assert not (p.gate_expand.transpose(1, 2) * ~gates).any()
    for m, f in ((p.expand, blocks), (p.gate_expand, gates)):  # (L, NB / NG, P)
        meets = (m != 0).reshape(layers, m.shape[1], size // HEAD_TILE, HEAD_TILE).any(3).transpose(1, 2)
        assert torch.equal(f[:, ::HEAD_TILE], meets)
    if hidden_channels == 5:
        assert p.structure_slabs.double().mean() < 0.5


def test_head_row_flags_flag_what_the_pooled_head_reads(any_group):
    """``head_row_flags[c, k, t]`` flags row k of channel c's head where it meets the support in output tile t: every
    non-zero of the head and its support lies in a flagged row, every flag has a support entry — on every group."""
    t = fastik.FieldType(any_group, FIELDS[any_group.dim])
    p = pack_gmlp(fastik.ImplicitPointConv(t, t, hidden_channels=5, backend="fused").kernel, torch.float64)
    din, size, dout_p = p.head.shape
    assert p.head_row_flags.dtype == torch.uint8 and p.head_row_flags.shape == (din, size, dout_p // HEAD_TILE)
    rows = p.head_row_flags.bool().repeat_interleave(HEAD_TILE, 2)  # [c, k, output column]
    assert not (p.head * ~rows).any() and not (p.head_support.bool() & ~rows).any()
    meets = p.head_support.bool().reshape(din, size, dout_p // HEAD_TILE, HEAD_TILE).any(3)
    assert not (p.head_row_flags.bool() & ~meets).any()


def test_weight_slabs_skip_most_of_the_hidden_weights():
    """At the anchors' and the default width (so3, the standard fields) the flags skip most of a later layer's
    weight in both products: what the kernels' weight reads save (bench/NOTES.md)."""
    t = fastik.FieldType(fastik.group("so3"), "16x0e + 16x1o")
    for hidden_channels in (5, 16):
        p = pack_gmlp(fastik.ImplicitPointConv(t, t, hidden_channels=hidden_channels, backend="fused").kernel,
                      torch.float64)
        assert p.layers == 2 and p.weight_slabs[1].double().mean() < 0.5
