"""Triton kernels of the chunked selective scan (forward and backward), unfused and fused with the cross-scan.

Scan layout. A *row* is one (batch, route k, block of BC channels); the unfused selective scan is the special case
"one route per channel group, identity order". A program walks a *segment* of a row, carrying the state in
registers:

    h_t = a_t * h_{t-1} + b_t,   a_t = exp(dt_t * A),  b_t = dt_t * B_t * u_t,  y_t = <C_t, h_t> + D * u_t

Every thread owns whole channels (and states) of the block, so the recurrence runs step by step in registers: a
chunk's T steps are unrolled, their loads issued together (one chunk or round ahead), then the T
updates follow. Each step reads BC consecutive channels of one image position, which the routes give as a row-major
index ``p`` stepping by +-1 (rows) or +-W (columns, wrapping to the next column). The backward takes a segment chunk
by chunk, one warp a row. The forward takes it in *rounds* of S consecutive chunks, one a warp: each chunk runs on
its own from a zero state (keeping its steps' decays and inputs), a scan over the round's chunk aggregates gives the
state entering each chunk, and the chunks then make their outputs. The forward's tiles are (S, NP, BC).

A row is cut into several segments only when rows alone are too few to fill the GPU; the segments are then chained
by a decoupled look-back (as in single-pass prefix sums): a program first computes its segment's aggregate (P, S)
(h_out = P * h_in + S), publishes it, reads its predecessors' aggregates or inclusive states, a window of WIN
segments per round trip, until it meets an inclusive state, publishes its own inclusive state and only then makes its
outputs. Programs take their work from an atomic ticket, so a program only ever waits on programs that have already
started: no deadlock whatever order the hardware schedules them in.

Where the four routes add into a merged output, a (batch, channel block) group's first program (route 0) zeroes the
group's slice of it and raises a flag that the group's other programs wait for before adding: the zeros are written
into L2 just before they are needed (rows cut into segments take a memset instead).

The backward runs the same machinery over reversed time for the adjoint state g_t = C_t gy_t + a_{t+1} g_{t+1},
recomputes h inside each chunk from the state the forward saved at the chunk's start, and forms every gradient from
(h, g) in registers.
"""
import os

import triton
import triton.language as tl

# flags of the look-back: nothing published yet, aggregate published, inclusive state published
_AGGREGATE = tl.constexpr(1)
_INCLUSIVE = tl.constexpr(2)


@triton.jit
def _combine(a1, b1, a2, b2):
    """Compose h -> a1 * h + b1, then h -> a2 * h + b2."""
    return a1 * a2, a2 * b1 + b2


_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)

if os.environ.get('TRITON_INTERPRET') == '1':
    @triton.jit
    def _ex2(x):
        """2 ** x (the interpreter's)."""
        return tl.exp2(x)

    @triton.jit
    def _lg2(x):
        """log2(x) (the interpreter's)."""
        return tl.log2(x)
else:
    # The hardware's approximations (relative error about 2^-22, subnormals flushed to zero) as single instructions:
    # tl.exp and tl.log add range fix-ups or libdevice polynomials around them, which cost several times more in the
    # scan's inner loop.
    @triton.jit
    def _ex2(x):
        """2 ** x of a float32 tile."""
        return tl.inline_asm_elementwise('ex2.approx.ftz.f32 $0, $1;', '=r,r', [x], dtype=tl.float32, is_pure=True,
                                         pack=1)

    @triton.jit
    def _lg2(x):
        """log2(x) of a float32 tile."""
        return tl.inline_asm_elementwise('lg2.approx.ftz.f32 $0, $1;', '=r,r', [x], dtype=tl.float32, is_pure=True,
                                         pack=1)


@triton.jit
def _softplus(x):
    """log(1 + exp(x)) (x itself above 20, as torch), with an accurate log1p for small exp(x): for w = 1 + z rounded,
    log(1 + z) = log(w) + e / w to first order in the rounding error e = z - (w - 1) (exact), and 1 / w ~ 2 - w is
    close enough for that correction below w = 2 (above it, e / w is below float32 resolution)."""
    z = _ex2(x * _LOG2E)
    w = 1.0 + z
    sp = _lg2(w) * _LN2 + (z - (w - 1.0)) * tl.maximum(2.0 - w, 0.0)
    return tl.where(x > 20.0, x, sp)


@triton.jit
def _look_back(flag_ptr, agg_ptr, incl_ptr, s, n_seg, agg_stride, incl_stride, agg_offs, incl_offs, incl_mask,
               REVERSE: tl.constexpr, NP: tl.constexpr, BC: tl.constexpr, WIN: tl.constexpr):
    """The state entering segment s of a row, from the segments before it (after it when REVERSE).

    Reads WIN segments' flags at a time, waits until all are published, and composes the aggregates of the segments
    between s and the nearest inclusive state (or the row's end) in time order.
    """
    ca = tl.full((NP, BC), 1.0, tl.float32)
    cb = tl.zeros((NP, BC), tl.float32)
    w = tl.arange(0, WIN)
    if REVERSE:
        j0 = s + 1
        todo = j0 < n_seg
    else:
        j0 = s - WIN
        todo = s > 0
    while todo:
        js = j0 + w
        valid = (js >= 0) & (js < n_seg)
        f = tl.where(valid, tl.atomic_add(flag_ptr + js, 0, mask=valid, sem='acquire'), _AGGREGATE)
        while tl.min(f, 0) == 0:
            f = tl.where(valid, tl.atomic_add(flag_ptr + js, 0, mask=valid, sem='acquire'), _AGGREGATE)
        if REVERSE:
            star = tl.min(tl.where(f == _INCLUSIVE, js, n_seg), 0)
            use_agg = valid & (js < star)
        else:
            star = tl.max(tl.where(f == _INCLUSIVE, js, -1), 0)
            use_agg = valid & (js > star)
        is_star = ((js == star) & valid)[:, None, None]
        use_agg = use_agg[:, None, None]
        # one element a thread (no vector loads): the result then keeps the scan loops' one-channel-a-thread
        # layout instead of imposing this tile's on them (a shared-memory exchange at every step)
        agg = agg_ptr + tl.max_contiguous(js.to(tl.int64)[:, None, None] * agg_stride + agg_offs[None, :, :],
                                          [1, 1, 1])
        wa = tl.load(agg, mask=use_agg, other=1.0, cache_modifier='.cg')
        wb = tl.load(agg + NP * BC, mask=use_agg, other=0.0, cache_modifier='.cg')
        incl = incl_ptr + tl.max_contiguous(js.to(tl.int64)[:, None, None] * incl_stride + incl_offs[None, :, :],
                                            [1, 1, 1])
        wb += tl.load(incl, mask=is_star & incl_mask[None, :, :], other=0.0, cache_modifier='.cg')
        wa = tl.where(is_star, 0.0, wa)
        if REVERSE:
            sa, sb = tl.associative_scan((wa, wb), 0, _combine, reverse=True)
            pick = (w == 0)[:, None, None]
        else:
            sa, sb = tl.associative_scan((wa, wb), 0, _combine)
            pick = (w == WIN - 1)[:, None, None]
        cb += ca * tl.sum(tl.where(pick, sb, 0.0), 0)
        ca *= tl.sum(tl.where(pick, sa, 0.0), 0)
        if REVERSE:
            todo = (star == n_seg) & (j0 + WIN < n_seg)
            j0 += WIN
        else:
            todo = (star < 0) & (j0 > 0)
            j0 -= WIN
    return cb


@triton.jit
def _publish(flag_ptr, ptr, value, mask, flag):
    """Store a segment's aggregate or inclusive state, then raise its flag (release: the data is visible first)."""
    tl.store(ptr, value, mask=mask)
    tl.debug_barrier()
    tl.atomic_xchg(flag_ptr, flag, sem='release')


@triton.jit
def _chain_segment(flag_ptr, status_ptr, row, s, n_seg, agg_a, agg_b, offs, REVERSE: tl.constexpr, NP: tl.constexpr,
                   BC: tl.constexpr, WIN: tl.constexpr):
    """Publish segment s's aggregate (h_out = agg_a * h_in + agg_b), take the state entering it from the look-back
    over the row's other segments (those after it when REVERSE), publish its inclusive state and return the entering
    one. Each segment's status holds (agg_a, agg_b, inclusive state, entering state): the entering state goes through
    its (private) slot and comes back in the layout of ``offs``, so that the look-back's tiles do not impose their
    layout on the scan loops that carry it on (a shared-memory exchange at every step)."""
    row_flags = flag_ptr + row * n_seg
    seg_status = status_ptr + (row.to(tl.int64) * n_seg + s) * 4 * NP * BC
    tl.store(seg_status + offs, agg_a)
    _publish(row_flags + s, seg_status + NP * BC + offs, agg_b, offs >= 0, _AGGREGATE)
    row_status = status_ptr + row.to(tl.int64) * n_seg * 4 * NP * BC
    entering = _look_back(row_flags, row_status, row_status + 2 * NP * BC, s, n_seg, 4 * NP * BC, 4 * NP * BC, offs,
                          offs, offs >= 0, REVERSE, NP, BC, WIN)
    _publish(row_flags + s, seg_status + 2 * NP * BC + offs, agg_a * entering + agg_b, offs >= 0, _INCLUSIVE)
    tl.store(seg_status + 3 * NP * BC + offs, entering)
    tl.debug_barrier()
    return tl.load(seg_status + 3 * NP * BC + offs, volatile=True)


@triton.jit
def _ticket(flag_ptr, n_routes, n_seg):
    """This program's (batch, route, channel block, segment), from an atomic ticket.

    Tickets run group by group ((batch, channel block) groups), inside a group segment by segment, routes fastest:
    a group's four routes and all its segments are in flight together, so that their shared input and merged output
    can stay in L2.
    """
    n_flags = tl.num_programs(0)
    ticket = tl.atomic_add(flag_ptr + n_flags, 1, sem='relaxed')
    rest = ticket // n_routes
    return rest // n_seg, ticket % n_routes, rest % n_seg


@triton.jit
def _route_start(k, t, L, H, W, CROSS: tl.constexpr):
    """Image position (row-major index) of step t of route k, the position step to the next one, and what a column
    route adds to wrap past the image's edge into the next column: routes go row-major, column-major, and both
    reversed. Unrouted: position t, step 1."""
    if CROSS:
        rev = k >= 2
        col = (k % 2) == 1
        tt = tl.where(rev, L - 1 - t, t)
        dp = tl.where(col, W, 1)
        return tl.where(col, (tt % H) * W + tt // H, tt), tl.where(rev, -dp, dp), tl.where(rev, L - 1, 1 - L)
    else:
        return t, 1, 0


@triton.jit
def _next_position(p, dp, wrap, L, CROSS: tl.constexpr):
    """The position after p on its route (walking backwards: -dp, -wrap); a column route wraps from the last row to
    the next column (one unsigned comparison catches both edges). Past the route's end the result is meaningless
    (such steps are masked)."""
    p = p + dp
    if CROSS:
        p = tl.where(p.to(tl.uint32, bitcast=True) >= L.to(tl.uint32), p + wrap, p)
    return p


@triton.jit
def _chunk_loads(u_base, dl_base, B_base, C_base, k, t0, L, H, W, c, n, mc, mn,
                 s_uc, s_up, s_dc, s_dp, s_Bn, s_Bp, s_Cn, s_Cp, CROSS: tl.constexpr, T: tl.constexpr):
    """Steps t0 .. t0 + T - 1 of a row in their stored dtype (the backward's), as tuples over the steps: u and delta
    (BC,), B and C (NP,), the route walked once for all four. Steps at or past L are masked off (zeros); a chunk past
    L loads nothing."""
    p, dp, wrap = _route_start(k, t0, L, H, W, CROSS)
    us = ()
    ds = ()
    bs = ()
    cs = ()
    for j in tl.static_range(T):
        valid = t0 + j < L
        us = us + (tl.load(u_base + p * s_up + c * s_uc, mask=valid & mc, other=0.0),)
        ds = ds + (tl.load(dl_base + p * s_dp + c * s_dc, mask=valid & mc, other=0.0),)
        bs = bs + (tl.load(B_base + p * s_Bp + n * s_Bn, mask=valid & mn, other=0.0),)
        cs = cs + (tl.load(C_base + p * s_Cp + n * s_Cn, mask=valid & mn, other=0.0),)
        p = _next_position(p, dp, wrap, L, CROSS)
    return us, ds, bs, cs


@triton.jit
def _operand_steps(base, k, t0, L, H, W, idx, m_idx, s_idx, s_p, CROSS: tl.constexpr, T: tl.constexpr):
    """One operand at steps t0 .. t0 + T - 1 of a row, a tuple of tiles over ``idx`` (channels or states; zeros at
    or past L)."""
    p, dp, wrap = _route_start(k, t0, L, H, W, CROSS)
    xs = ()
    for j in tl.static_range(T):
        xs = xs + (tl.load(base + p * s_p + idx * s_idx, mask=(t0 + j < L) & m_idx, other=0.0),)
        p = _next_position(p, dp, wrap, L, CROSS)
    return xs


@triton.jit
def _dt(delta, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """The pre-activation delta + bias, and dt = its softplus (or itself), float32 (BC,)."""
    pre = delta.to(tl.float32)
    if HAS_BIAS:
        pre += bias
    return pre, (_softplus(pre) if SOFTPLUS else pre)


@triton.jit
def _step_terms(u, delta, Bt, A, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """One step's decay a = exp(dt A) and input b = dt u B, (NP, BC) float32, plus u, delta's pre-activation and dt."""
    u = u.to(tl.float32)
    pre, dt = _dt(delta, bias, HAS_BIAS, SOFTPLUS)
    return tl.exp(dt[None, :] * A), (dt * u)[None, :] * Bt.to(tl.float32)[:, None], u, pre, dt


@triton.jit
def _program_setup(flag_ptr, A_ptr, D_ptr, bias_ptr, n_state, channels, n_routes, n_cblk, n_chunks, seg_chunks, n_seg,
                   REVERSE: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, NP: tl.constexpr,
                   BC: tl.constexpr, A_IS_LOG: tl.constexpr):
    """This program's work (segments numbered from the row's end when REVERSE) and per-channel parameters: batch
    (int64), route (int32, int64), segment, row, channel and state indices and masks, the channels' index among the
    routes' channels, A (NP, BC; -exp of what A_ptr holds when A_IS_LOG; 0 off the channels and states), delta_bias and
    D (BC,) in float32, the (NP, BC) state offsets, the segment's chunks [first, end)."""
    group, k, s = _ticket(flag_ptr, n_routes, n_seg)
    b = group // n_cblk
    cbk = group % n_cblk
    if REVERSE:
        s = n_seg - 1 - s
    row = (b * n_routes + k) * n_cblk + cbk
    k64 = k.to(tl.int64)
    c = cbk * BC + tl.arange(0, BC)
    n = tl.arange(0, NP)
    mc, mn = c < channels, n < n_state
    ch = k64 * channels + c
    mnc = mn[:, None] & mc[None, :]
    A = tl.load(A_ptr + ch[None, :] * n_state + n[:, None], mask=mnc, other=0.0).to(tl.float32)
    if A_IS_LOG:
        A = tl.where(mnc, -tl.exp(A), 0.0)
    bias = tl.load(bias_ptr + ch, mask=mc, other=0.0).to(tl.float32) if HAS_BIAS else 0.0
    D = tl.load(D_ptr + ch, mask=mc, other=0.0).to(tl.float32) if HAS_D else 0.0
    offs = n[:, None] * BC + tl.arange(0, BC)[None, :]
    first = s * seg_chunks
    return (b.to(tl.int64), k, k64, s, row, c, n, mc, mn, ch, A, bias, D, offs, first,
            tl.minimum(first + seg_chunks, n_chunks))


# Sizes and strides vary with the model's stage, image size and projection width; specialising on them (value 1,
# divisibility by 16) would compile the long unrolled kernels once per stage. Only the channel strides (1 in the
# model's channel-last layouts) are specialised.
_SIZES = ['L', 'H', 'W', 'n_state', 'channels', 'n_routes', 'n_cblk', 'n_chunks', 'n_seg']
_STRIDES_FWD = ['s_ub', 's_uk', 's_up', 's_db', 's_dk', 's_dp', 's_Bb', 's_Bk', 's_Bn', 's_Bp', 's_Cb', 's_Ck', 's_Cn',
                's_Cp', 's_yb', 's_yk', 's_yp']
_STRIDES_BWD = _STRIDES_FWD[:-3] + ['s_gb', 's_gk', 's_gp', 's_dub', 's_duk', 's_dup', 's_ddb', 's_ddk', 's_ddp',
                                    's_dBb', 's_dBk', 's_dBn', 's_dBp', 's_dCb', 's_dCk', 's_dCn', 's_dCp']


@triton.jit
def _load(ptr, step_ok, mask, TAIL: tl.constexpr, EVEN: tl.constexpr, EVICT_FIRST: tl.constexpr = False):
    """A tile of ptr: in the row's last round (TAIL) only where the step is before L; where not EVEN (channels not a
    multiple of BC or d_state not a power of two) only inside ``mask``; zeros elsewhere. EVICT_FIRST: the lines
    read are the first to leave L2 (data read for the last time)."""
    policy: tl.constexpr = 'evict_first' if EVICT_FIRST else ''
    if TAIL:
        if EVEN:
            return tl.load(ptr, mask=step_ok, other=0.0, eviction_policy=policy)
        else:
            return tl.load(ptr, mask=step_ok & mask, other=0.0, eviction_policy=policy)
    elif EVEN:
        return tl.load(ptr, eviction_policy=policy)
    else:
        return tl.load(ptr, mask=mask, other=0.0, eviction_policy=policy)


@triton.jit
def _round_loads(u_base, dl_base, B_base, C_base, k, r, L, H, W, c, n, mc, mn, s_uc, s_up, s_dc, s_dp, s_Bn, s_Bp,
                 s_Cn, s_Cp, s_yp, low_rank, TAIL: tl.constexpr, WITH_C: tl.constexpr, EVEN: tl.constexpr,
                 CROSS: tl.constexpr, LOW_RANK: tl.constexpr, S: tl.constexpr, T: tl.constexpr):
    """Round r of a row: chunks r * S + i (i < S) of T steps each, tuples over the steps of u and delta (S, BC),
    B and C (S, NP) (C only ``WITH_C``) in their stored dtype and of the output's position offsets (S,). A whole
    round loads every step (no per-step mask); TAIL (the row's last round, or a first round that may be it) only
    the steps before L. With C (the outputs' pass), delta's lines are marked evict-first in L2: read once, they
    should not push out the float32 output that the four routes add into at different times. LOW_RANK: dl_base
    holds the rank-R input of dt_proj (stride s_dc along the rank), and ``low_rank`` is (rank, the route's dt_proj
    weight as RP rows (BC,) float32, zero past the rank): delta is made here, one rank at a time (a 2-D tile, not a
    (S, RP, BC) product, which takes twice the registers), rounded to the stored dtype as the
    batched matmul that otherwise makes it would round it."""
    t = (r * S + tl.arange(0, S)) * T
    p, dp, wrap = _route_start(k, t, L, H, W, CROSS)
    us = ()
    ds = ()
    bs = ()
    cs = ()
    ys = ()
    for j in tl.static_range(T):
        ok = (t + j < L)[:, None]
        us = us + (_load(u_base + (p[:, None] * s_up + c[None, :] * s_uc), ok, mc[None, :], TAIL, EVEN),)
        if LOW_RANK:
            rank, weight_rows = low_rank
            delta = tl.zeros((S, c.shape[0]), tl.float32)
            for q in tl.static_range(len(weight_rows)):
                low = _load(dl_base + (p * s_dp + q * s_dc), t + j < L, q < rank, TAIL, False, WITH_C)
                delta += low.to(tl.float32)[:, None] * weight_rows[q][None, :]
            ds = ds + (delta.to(dl_base.dtype.element_ty),)
        else:
            ds = ds + (_load(dl_base + (p[:, None] * s_dp + c[None, :] * s_dc), ok, mc[None, :], TAIL, EVEN, WITH_C),)
        bs = bs + (_load(B_base + (p[:, None] * s_Bp + n[None, :] * s_Bn), ok, mn[None, :], TAIL, EVEN),)
        if WITH_C:
            cs = cs + (_load(C_base + (p[:, None] * s_Cp + n[None, :] * s_Cn), ok, mn[None, :], TAIL, EVEN),)
        ys = ys + (p * s_yp,)
        p = _next_position(p, dp, wrap, L, CROSS)
    return us, ds, bs, cs, ys


@triton.jit
def _round_local(us, ds, bs, r, L, A2, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, TAIL: tl.constexpr,
                 S: tl.constexpr, T: tl.constexpr):
    """Every chunk of a round on its own: per step the decay a = 2^(dt A log2(e)) and input b = dt u B (S, NP, BC)
    (identity a = 1, b = 0 at or past L) and u (S, BC) float32, as tuples over the steps, plus each chunk's aggregate
    h -> pa * h + hb."""
    t = (r * S + tl.arange(0, S)) * T
    decays = ()
    inputs = ()
    u32 = ()
    pa = tl.full((S, A2.shape[0], A2.shape[1]), 1.0, tl.float32)
    hb = tl.zeros((S, A2.shape[0], A2.shape[1]), tl.float32)
    for j in tl.static_range(T):
        u = us[j].to(tl.float32)
        _, dt = _dt(ds[j], bias, HAS_BIAS, SOFTPLUS)
        a = _ex2(dt[:, None, :] * A2[None, :, :])
        x = (dt * u)[:, None, :] * bs[j].to(tl.float32)[:, :, None]
        if TAIL:
            valid = (t + j < L)[:, None, None]
            a = tl.where(valid, a, 1.0)
            x = tl.where(valid, x, 0.0)
        hb = a * hb + x
        pa = a * pa
        decays = decays + (a,)
        inputs = inputs + (x,)
        u32 = u32 + (u,)
    return decays, inputs, u32, pa, hb


@triton.jit
def _round_aggregate(pa, hb, S: tl.constexpr):
    """The round's aggregate (NP, BC): its chunks' aggregates composed in order."""
    ia, ib = tl.associative_scan((pa, hb), 0, _combine)
    last = (tl.arange(0, S) == S - 1)[:, None, None]
    return tl.sum(tl.where(last, ia, 0.0), 0), tl.sum(tl.where(last, ib, 0.0), 0)


@triton.jit
def _combine_exclusive(a1, b1, e1, f1, a2, b2, e2, f2):
    """Scan pairs (inclusive, exclusive) of affine maps: a range's inclusive map composes all of its chunks, its
    exclusive map all but the last. Leaves are (chunk's map, identity)."""
    return a1 * a2, a2 * b1 + b2, a1 * e2, e2 * b1 + f2


@triton.jit
def _round_states(h, pa, hb, S: tl.constexpr):
    """From the state h entering a round and its chunks' aggregates: the state entering each chunk (S, NP, BC) and
    the state after the round (NP, BC)."""
    ia, ib, ea, eb = tl.associative_scan((pa, hb, tl.full(pa.shape, 1.0, tl.float32), tl.zeros(hb.shape, tl.float32)),
                                         0, _combine_exclusive)
    last = (tl.arange(0, S) == S - 1)[:, None, None]
    return ea * h[None, :, :] + eb, tl.sum(tl.where(last, ia * h[None, :, :] + ib, 0.0), 0)


@triton.jit
def _round_outputs(h_in, decays, inputs, u32, cs, ys, r, L, D, y_base, c, mc, s_yc, TAIL: tl.constexpr,
                   EVEN: tl.constexpr, CROSS: tl.constexpr, S: tl.constexpr, T: tl.constexpr):
    """Run each chunk of a round from the state entering it and write every step's output: stored, or atomically
    added when the four routes merge into it (CROSS)."""
    t = (r * S + tl.arange(0, S)) * T
    h = h_in
    for j in tl.static_range(T):
        h = decays[j] * h + inputs[j]
        y = tl.sum(cs[j].to(tl.float32)[:, :, None] * h, 1) + D * u32[j]
        ptr = y_base + (ys[j][:, None] + c[None, :] * s_yc)
        if TAIL:
            mask = (t + j < L)[:, None] & mc[None, :]
            if CROSS:
                tl.atomic_add(ptr, y, mask=mask, sem='relaxed')
            else:
                tl.store(ptr, y.to(ptr.dtype.element_ty), mask=mask)
        elif EVEN:
            if CROSS:
                tl.atomic_add(ptr, y, sem='relaxed')
            else:
                tl.store(ptr, y.to(ptr.dtype.element_ty))
        else:
            if CROSS:
                tl.atomic_add(ptr, y, mask=mc[None, :], sem='relaxed')
            else:
                tl.store(ptr, y.to(ptr.dtype.element_ty), mask=mc[None, :])


@triton.jit
def _zero_group_output(y_base, group_flag, L, c, mc, s_yc, s_yp, P: tl.constexpr):
    """Zero a (batch, channel block) group's slice of the merged output, then raise its flag (release: the zeros are
    visible first). The group's first program does this just before the group's routes add into the slice, so the
    zeroed lines are written into L2 when they are needed, instead of by a memset of the whole output beforehand."""
    pos = tl.arange(0, P)
    for p0 in range(0, L, P):
        p = p0 + pos
        tl.store(y_base + (p[:, None] * s_yp + c[None, :] * s_yc), tl.zeros((P, c.shape[0]), tl.float32),
                 mask=(p < L)[:, None] & mc[None, :])
    tl.debug_barrier()
    tl.atomic_xchg(group_flag, 1, sem='release')


@triton.jit
def _wait_group_output(group_flag):
    """Wait until the group's output slice is zeroed (by a program with an earlier ticket: no deadlock)."""
    while tl.atomic_add(group_flag, 0, sem='acquire') == 0:
        pass


@triton.jit(do_not_specialize=_SIZES + ['seg_rounds', 'rank', 's_wk', 's_wc'] + _STRIDES_FWD)
def scan_fwd_kernel(
        # operands: pointer, then strides along (batch, route, channel or state, image position)
        u_ptr, s_ub, s_uk, s_uc, s_up,
        dl_ptr, s_db, s_dk, s_dc, s_dp,
        B_ptr, s_Bb, s_Bk, s_Bn, s_Bp,
        C_ptr, s_Cb, s_Ck, s_Cn, s_Cp,
        y_ptr, s_yb, s_yk, s_yc, s_yp,
        # dt_proj's weight (LOW_RANK): pointer, then strides along (route, channel, rank)
        w_ptr, s_wk, s_wc, s_wr,
        # per-channel parameters (contiguous)
        A_ptr, D_ptr, bias_ptr,
        # work buffers: chunk states, segment status, look-back flags and ticket counter
        states_ptr, status_ptr, flag_ptr,
        # sizes
        L, H, W, n_state, channels, n_routes, n_cblk, n_chunks, seg_rounds, n_seg, rank,
        # meta-parameters
        CROSS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        T: tl.constexpr, S: tl.constexpr, NP: tl.constexpr, BC: tl.constexpr, WIN: tl.constexpr,
        SAVE_STATES: tl.constexpr, EVEN: tl.constexpr, SHARED_POS: tl.constexpr, ZERO_Y: tl.constexpr,
        A_IS_LOG: tl.constexpr, LOW_RANK: tl.constexpr, RP: tl.constexpr):
    """Forward over one segment (seg_rounds rounds) of one row, the state carried between rounds.

    A round is S consecutive chunks of T steps, one per warp: each chunk first runs on its own (its steps' decays
    and inputs kept in registers, and its aggregate); a scan over the round's aggregates gives the state entering
    each chunk, from which the chunks make their outputs. S chunks in flight keep the row's parallelism at S x BC
    threads without a second pass over the inputs, and fewer rows in flight keep the outputs that the four routes
    merge (and their shared input) in L2.

    Whole rounds run without per-step masks (and, with EVEN: channels a multiple of BC, d_state a power of two,
    without any); only the row's last round checks each step against L. With several segments per row, a first
    pass over the segment computes its aggregate for the look-back; the second pass produces y from the carried-in
    state. The state entering every chunk is saved for the backward (SAVE_STATES), plus the row's final state.
    SHARED_POS: u, delta and y have one position stride, and B and C another (as the model lays them out), so that a
    step's offsets are computed once. LOW_RANK: the delta operand is the rank-``rank`` input of dt_proj, expanded with
    its weight (RP >= rank a power of two) as it is loaded, so the full delta is never written.
    """
    if SHARED_POS:
        s_dp = s_up
        s_yp = s_up
        s_Cp = s_Bp
    n_rounds = (n_chunks + S - 1) // S
    b64, k, k64, s, row, c, n, mc, mn, ch, A, bias, D, offs, first, end = _program_setup(
        flag_ptr, A_ptr, D_ptr, bias_ptr, n_state, channels, n_routes, n_cblk, n_rounds, seg_rounds, n_seg,
        False, HAS_D, HAS_BIAS, NP, BC, A_IS_LOG)
    A2 = A * _LOG2E
    if LOW_RANK:
        weight_rows = ()
        for q in tl.static_range(RP):  # rounded as the matmul's operand
            weight_row = tl.load(w_ptr + k64 * s_wk + c * s_wc + q * s_wr, mask=mc & (q < rank), other=0.0)
            weight_rows = weight_rows + (weight_row.to(dl_ptr.dtype.element_ty).to(tl.float32),)
        low_rank = (rank, weight_rows)
    else:
        low_rank = (rank, ())  # unused
    u_base = u_ptr + b64 * s_ub + k64 * s_uk
    dl_base = dl_ptr + b64 * s_db + k64 * s_dk
    B_base = B_ptr + b64 * s_Bb + k64 * s_Bk
    C_base = C_ptr + b64 * s_Cb + k64 * s_Ck
    y_base = y_ptr + b64 * s_yb + k64 * s_yk
    full_end = tl.minimum(end, L // (S * T))  # rounds [first, full_end) are whole; one at full_end is the last
    if ZERO_Y:
        # one flag per (batch, channel block) group after the rows' flags and the ticket counter
        group_flag = flag_ptr + tl.num_programs(0) + 1 + b64 * n_cblk + row % n_cblk
        zeroes = k == 0
        if zeroes:
            _zero_group_output(y_base, group_flag, L, c, mc, s_yc, s_yp, S * T)

    h = tl.zeros((NP, BC), tl.float32)
    if n_seg > 1:
        agg_a = tl.full((NP, BC), 1.0, tl.float32)
        agg_b = tl.zeros((NP, BC), tl.float32)
        nxt = _round_loads(u_base, dl_base, B_base, C_base, k, first, L, H, W, c, n, mc, mn, s_uc, s_up, s_dc, s_dp,
                           s_Bn, s_Bp, s_Cn, s_Cp, s_yp, low_rank, True, False, EVEN, CROSS, LOW_RANK, S, T)
        for r in range(first, full_end):
            us, ds, bs, _, _ = nxt
            r_next = tl.minimum(r + 1, full_end - 1)  # past the whole rounds: this one again (no masks needed)
            nxt = _round_loads(u_base, dl_base, B_base, C_base, k, r_next, L, H, W, c, n, mc, mn, s_uc, s_up,
                               s_dc, s_dp, s_Bn, s_Bp, s_Cn, s_Cp, s_yp, low_rank, False, False, EVEN, CROSS,
                               LOW_RANK, S, T)
            _, _, _, pa, hb = _round_local(us, ds, bs, r, L, A2, bias, HAS_BIAS, SOFTPLUS, False, S, T)
            ra, rb = _round_aggregate(pa, hb, S)
            agg_b = ra * agg_b + rb
            agg_a = ra * agg_a
        if full_end < end:
            us, ds, bs, _, _ = _round_loads(u_base, dl_base, B_base, C_base, k, full_end, L, H, W, c, n, mc, mn, s_uc,
                                            s_up, s_dc, s_dp, s_Bn, s_Bp, s_Cn, s_Cp, s_yp, low_rank, True, False,
                                            EVEN, CROSS, LOW_RANK, S, T)
            _, _, _, pa, hb = _round_local(us, ds, bs, full_end, L, A2, bias, HAS_BIAS, SOFTPLUS, True, S, T)
            ra, rb = _round_aggregate(pa, hb, S)
            agg_b = ra * agg_b + rb
            agg_a = ra * agg_a
        h = _chain_segment(flag_ptr, status_ptr, row, s, n_seg, agg_a, agg_b, offs, False, NP, BC, WIN)

    n_slots = n_chunks + 1 if SAVE_STATES else 1
    row_states = states_ptr + row.to(tl.int64) * n_slots * NP * BC
    chunk_offs = tl.arange(0, S)[:, None, None] * NP * BC + offs[None, :, :]
    nxt = _round_loads(u_base, dl_base, B_base, C_base, k, first, L, H, W, c, n, mc, mn, s_uc, s_up, s_dc, s_dp,
                       s_Bn, s_Bp, s_Cn, s_Cp, s_yp, low_rank, True, True, EVEN, CROSS, LOW_RANK, S, T)
    if ZERO_Y:
        if not zeroes:
            _wait_group_output(group_flag)
    for r in range(first, full_end):
        us, ds, bs, cs, ys = nxt
        r_next = tl.minimum(r + 1, full_end - 1)
        nxt = _round_loads(u_base, dl_base, B_base, C_base, k, r_next, L, H, W, c, n, mc, mn, s_uc, s_up, s_dc,
                           s_dp, s_Bn, s_Bp, s_Cn, s_Cp, s_yp, low_rank, False, True, EVEN, CROSS, LOW_RANK, S, T)
        decays, inputs, u32, pa, hb = _round_local(us, ds, bs, r, L, A2, bias, HAS_BIAS, SOFTPLUS, False, S, T)
        h_in, h = _round_states(h, pa, hb, S)
        if SAVE_STATES:
            tl.store(row_states + r * S * NP * BC + chunk_offs, h_in.to(states_ptr.dtype.element_ty))
        _round_outputs(h_in, decays, inputs, u32, cs, ys, r, L, D, y_base, c, mc, s_yc, False, EVEN, CROSS, S, T)
    if full_end < end:
        us, ds, bs, cs, ys = _round_loads(u_base, dl_base, B_base, C_base, k, full_end, L, H, W, c, n, mc, mn, s_uc,
                                          s_up, s_dc, s_dp, s_Bn, s_Bp, s_Cn, s_Cp, s_yp, low_rank, True, True, EVEN,
                                          CROSS, LOW_RANK, S, T)
        decays, inputs, u32, pa, hb = _round_local(us, ds, bs, full_end, L, A2, bias, HAS_BIAS, SOFTPLUS, True, S, T)
        h_in, h = _round_states(h, pa, hb, S)
        if SAVE_STATES:
            in_row = (full_end * S + tl.arange(0, S) < n_chunks)[:, None, None]
            tl.store(row_states + full_end * S * NP * BC + chunk_offs, h_in.to(states_ptr.dtype.element_ty),
                     mask=in_row)
        _round_outputs(h_in, decays, inputs, u32, cs, ys, full_end, L, D, y_base, c, mc, s_yc, True, EVEN, CROSS, S,
                       T)
    tl.store(row_states + (n_slots - 1) * NP * BC + offs, h.to(states_ptr.dtype.element_ty),
             mask=(offs >= 0) & (end == n_rounds))


@triton.jit
def _decay_at(dl_base, k, t, L, H, W, c, mc, s_dc, s_dp, A, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
              CROSS: tl.constexpr):
    """a_t = exp(dt_t A) of step t of a row, (NP, BC); zero at or past L (no adjoint flows in from there)."""
    p, _, _ = _route_start(k, t, L, H, W, CROSS)
    d = tl.load(dl_base + p * s_dp + c * s_dc, mask=(t < L) & mc, other=0.0)
    _, dt = _dt(d, bias, HAS_BIAS, SOFTPLUS)
    return tl.where(t < L, tl.exp(dt[None, :] * A), 0.0)


@triton.jit(do_not_specialize=_SIZES + ['seg_chunks'] + _STRIDES_BWD)
def scan_bwd_kernel(
        # operands and their gradients: pointer, then strides along (batch, route, channel or state, position)
        u_ptr, s_ub, s_uk, s_uc, s_up,
        dl_ptr, s_db, s_dk, s_dc, s_dp,
        B_ptr, s_Bb, s_Bk, s_Bn, s_Bp,
        C_ptr, s_Cb, s_Ck, s_Cn, s_Cp,
        gy_ptr, s_gb, s_gk, s_gc, s_gp,
        du_ptr, s_dub, s_duk, s_duc, s_dup,
        ddl_ptr, s_ddb, s_ddk, s_ddc, s_ddp,
        dB_ptr, s_dBb, s_dBk, s_dBn, s_dBp,
        dC_ptr, s_dCb, s_dCk, s_dCn, s_dCp,
        # per-channel parameters and their float32 gradients (contiguous)
        A_ptr, D_ptr, bias_ptr, dA_ptr, dD_ptr, dbias_ptr,
        # work buffers: the forward's chunk states, segment status, look-back flags and ticket counter
        states_ptr, status_ptr, flag_ptr,
        # sizes
        L, H, W, n_state, channels, n_routes, n_cblk, n_chunks, seg_chunks, n_seg,
        # meta-parameters
        CROSS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        T: tl.constexpr, NP: tl.constexpr, BC: tl.constexpr, WIN: tl.constexpr, A_IS_LOG: tl.constexpr):
    """Backward over one segment of one row, chunks taken from its end, the adjoint carried between chunks.
    With dlog = d loss / d(dt * A):

        g_t = C_t gy_t + a_{t+1} g_{t+1}      dlog_t = g_t * a_t h_{t-1}
        d dt = sum_n dlog * A + (sum_n g B) u   d u = (sum_n g B) dt + D gy   dA = sum_t dlog dt
        dB = sum_c g dt u                        dC = sum_c gy h               dD = sum_t gy u

    h inside a chunk is recomputed from the forward's saved state entering it. With several segments per row, a
    first pass computes the segment's adjoint aggregate for the (reversed) look-back. du is atomically added when
    routes share the input (CROSS); dA, dB, dC, dD and d bias always are. With A_IS_LOG (A_ptr holds log(-A)) the
    gradient added into dA_ptr is that of the log: dA * A.
    """
    b64, k, k64, s, row, c, n, mc, mn, ch, A, bias, D, offs, first, end = _program_setup(
        flag_ptr, A_ptr, D_ptr, bias_ptr, n_state, channels, n_routes, n_cblk, n_chunks, seg_chunks, n_seg,
        True, HAS_D, HAS_BIAS, NP, BC, A_IS_LOG)
    mnc = mn[:, None] & mc[None, :]
    u_base = u_ptr + b64 * s_ub + k64 * s_uk
    dl_base = dl_ptr + b64 * s_db + k64 * s_dk
    B_base = B_ptr + b64 * s_Bb + k64 * s_Bk
    C_base = C_ptr + b64 * s_Cb + k64 * s_Ck
    gy_base = gy_ptr + b64 * s_gb + k64 * s_gk
    du_base = du_ptr + b64 * s_dub + k64 * s_duk
    ddl_base = ddl_ptr + b64 * s_ddb + k64 * s_ddk
    dB_base = dB_ptr + b64 * s_dBb + k64 * s_dBk
    dC_base = dC_ptr + b64 * s_dCb + k64 * s_dCk
    # a of the step after the segment: the adjoint entering from the next segment is scaled by it
    a_after = _decay_at(dl_base, k, end * T, L, H, W, c, mc, s_dc, s_dp, A, bias, HAS_BIAS, SOFTPLUS, CROSS)

    g = tl.zeros((NP, BC), tl.float32)  # adjoint at the first step after the current chunk
    if n_seg > 1:
        agg_a = tl.full((NP, BC), 1.0, tl.float32)
        agg_b = tl.zeros((NP, BC), tl.float32)
        a_next = a_after
        for i in range(end - first):
            t0 = (end - 1 - i) * T
            ds = _operand_steps(dl_base, k, t0, L, H, W, c, mc, s_dc, s_dp, CROSS, T)
            cs = _operand_steps(C_base, k, t0, L, H, W, n, mn, s_Cn, s_Cp, CROSS, T)
            gys = _operand_steps(gy_base, k, t0, L, H, W, c, mc, s_gc, s_gp, CROSS, T)
            for j in tl.static_range(T - 1, -1, -1):
                agg_b = a_next * agg_b + cs[j].to(tl.float32)[:, None] * gys[j].to(tl.float32)[None, :]
                agg_a = a_next * agg_a
                _, dt = _dt(ds[j], bias, HAS_BIAS, SOFTPLUS)
                a_next = tl.where(t0 + j < L, tl.exp(dt[None, :] * A), 0.0)
        g = _chain_segment(flag_ptr, status_ptr, row, s, n_seg, agg_a, agg_b, offs, True, NP, BC, WIN)

    row_states = states_ptr + row.to(tl.int64) * (n_chunks + 1) * NP * BC
    acc_dA = tl.zeros((NP, BC), tl.float32)
    acc_dD = tl.zeros((BC,), tl.float32)
    acc_dbias = tl.zeros((BC,), tl.float32)
    a_next = a_after
    nxt = _chunk_loads(u_base, dl_base, B_base, C_base, k, (end - 1) * T, L, H, W, c, n, mc, mn, s_uc, s_up, s_dc,
                       s_dp, s_Bn, s_Bp, s_Cn, s_Cp, CROSS, T)
    nxt_gy = _operand_steps(gy_base, k, (end - 1) * T, L, H, W, c, mc, s_gc, s_gp, CROSS, T)
    for i in range(end - first):
        ci = end - 1 - i
        t0 = ci * T
        us, ds, bs, cs = nxt
        gys = nxt_gy
        t_prev = tl.where(ci > first, t0 - T, n_chunks * T)  # before the segment: past L, which loads nothing
        nxt = _chunk_loads(u_base, dl_base, B_base, C_base, k, t_prev, L, H, W, c, n, mc, mn, s_uc, s_up, s_dc,
                           s_dp, s_Bn, s_Bp, s_Cn, s_Cp, CROSS, T)
        nxt_gy = _operand_steps(gy_base, k, t_prev, L, H, W, c, mc, s_gc, s_gp, CROSS, T)
        # the chunk's states, recomputed forward from the state saved at its start
        h = tl.load(row_states + ci * NP * BC + offs).to(tl.float32)
        hs = (h,)
        decays = ()
        dts = ()
        pres = ()
        for j in tl.static_range(T):
            a, x, _, pre, dt = _step_terms(us[j], ds[j], bs[j], A, bias, HAS_BIAS, SOFTPLUS)
            a = tl.where(t0 + j < L, a, 0.0)
            h = a * h + x
            hs = hs + (h,)
            decays = decays + (a,)
            dts = dts + (dt,)
            pres = pres + (pre,)
        # the adjoint backwards through the chunk, and every gradient of its steps (positions from its last valid
        # step backwards)
        p, dp, wrap = _route_start(k, tl.minimum(t0 + T - 1, L - 1), L, H, W, CROSS)
        for j in tl.static_range(T - 1, -1, -1):
            valid = t0 + j < L
            u = us[j].to(tl.float32)
            gy = gys[j].to(tl.float32)
            dt = dts[j]
            g = a_next * g + cs[j].to(tl.float32)[:, None] * gy[None, :]
            a_next = decays[j]
            dlog = g * a_next * hs[j]
            gB = tl.sum(g * bs[j].to(tl.float32)[:, None], 0)
            d_pre = tl.sum(dlog * A, 0) + gB * u
            if SOFTPLUS:
                d_pre *= tl.sigmoid(pres[j])
            acc_dA += dlog * dt[None, :]
            if HAS_D:
                acc_dD += gy * u
            if HAS_BIAS:
                acc_dbias += d_pre
            tl.atomic_add(dB_base + p * s_dBp + n * s_dBn, tl.sum(g * (dt * u)[None, :], 1), mask=valid & mn,
                          sem='relaxed')
            tl.atomic_add(dC_base + p * s_dCp + n * s_dCn, tl.sum(hs[j + 1] * gy[None, :], 1), mask=valid & mn,
                          sem='relaxed')
            tl.store(ddl_base + p * s_ddp + c * s_ddc, d_pre.to(ddl_ptr.dtype.element_ty), mask=valid & mc)
            du = gB * dt + D * gy
            if CROSS:
                tl.atomic_add(du_base + p * s_dup + c * s_duc, du, mask=valid & mc, sem='relaxed')
            else:
                tl.store(du_base + p * s_dup + c * s_duc, du.to(du_ptr.dtype.element_ty), mask=valid & mc)
            p = tl.where(valid, _next_position(p, -dp, -wrap, L, CROSS), p)
    if A_IS_LOG:
        acc_dA = acc_dA * A
    tl.atomic_add(dA_ptr + ch[None, :] * n_state + n[:, None], acc_dA, mask=mnc, sem='relaxed')
    if HAS_D:
        tl.atomic_add(dD_ptr + ch, acc_dD, mask=mc, sem='relaxed')
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + ch, acc_dbias, mask=mc, sem='relaxed')
