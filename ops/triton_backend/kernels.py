"""Triton kernels: route gathers for cross-scan/merge, and the chunked selective scan (forward and backward).

Scan layout. A *row* is one (batch, route k, block of BC channels); the unfused selective scan is the special case
"one route per channel group, identity order". A program walks a *segment* of a row, chunk by chunk (T steps each),
carrying the state in registers:

    h_t = a_t * h_{t-1} + b_t,   a_t = exp(dt_t * A),  b_t = dt_t * B_t * u_t,  y_t = <C_t, h_t> + D * u_t

Every thread owns whole channels (and states) of the block, so the recurrence runs step by step in registers with no
exchange between threads: a chunk's T steps are unrolled, their loads issued together (and, with PF, one chunk
ahead), then the T updates follow. Each step reads BC consecutive channels of one image position, which the routes
give as a row-major index ``p`` stepping by +-1 (rows) or +-W (columns, wrapping to the next column).

A row is cut into several segments only when rows alone are too few to fill the GPU; the segments are then chained
by a decoupled look-back (as in single-pass prefix sums): a program first computes its segment's aggregate (P, S)
(h_out = P * h_in + S), publishes it, reads its predecessors' aggregates or inclusive states, a window of WIN
segments per round trip, until it meets an inclusive state, publishes its own inclusive state and only then makes its
outputs. Programs take their work from an atomic ticket, so a program only ever waits on programs that have already
started: no deadlock whatever order the hardware schedules them in.

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


if os.environ.get('TRITON_INTERPRET') == '1':
    @triton.jit
    def _log(x):
        """Natural logarithm (the interpreter's)."""
        return tl.log(x)
else:
    @triton.jit
    def _log(x):
        """Natural logarithm of a float32 tile from the hardware's log2 approximation (relative error about 2^-22):
        tl.log's libdevice polynomial with its branches costs several times more in the scan's inner loop."""
        return tl.inline_asm_elementwise('lg2.approx.ftz.f32 $0, $1;', '=r,r', [x], dtype=tl.float32, is_pure=True,
                                         pack=1) * 0.6931471805599453


@triton.jit
def _softplus(x):
    """log(1 + exp(x)) (x itself above 20, as torch), with an accurate log1p for small exp(x)."""
    z = tl.exp(x)
    w = 1.0 + z
    sp = tl.where(w == 1.0, z, _log(w) * tl.fdiv(z, w - 1.0))
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
        agg = agg_ptr + js.to(tl.int64)[:, None, None] * agg_stride + agg_offs[None, :, :]
        wa = tl.load(agg, mask=use_agg, other=1.0, cache_modifier='.cg')
        wb = tl.load(agg + NP * BC, mask=use_agg, other=0.0, cache_modifier='.cg')
        incl = incl_ptr + js.to(tl.int64)[:, None, None] * incl_stride + incl_offs[None, :, :]
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
    one. Each segment's status holds (agg_a, agg_b, inclusive state)."""
    row_flags = flag_ptr + row * n_seg
    row_status = status_ptr + row.to(tl.int64) * n_seg * 3 * NP * BC
    tl.store(row_status + s * 3 * NP * BC + offs, agg_a)
    _publish(row_flags + s, row_status + s * 3 * NP * BC + NP * BC + offs, agg_b, offs >= 0, _AGGREGATE)
    entering = _look_back(row_flags, row_status, row_status + 2 * NP * BC, s, n_seg, 3 * NP * BC, 3 * NP * BC, offs,
                          offs, offs >= 0, REVERSE, NP, BC, WIN)
    _publish(row_flags + s, row_status + s * 3 * NP * BC + 2 * NP * BC + offs, agg_a * entering + agg_b, offs >= 0,
             _INCLUSIVE)
    return entering


@triton.jit
def _ticket(flag_ptr, n_routes, n_cblk, n_seg, GB):
    """This program's (batch, route, channel block, segment), from an atomic ticket.

    Tickets run over blocks of GB (batch, channel block) groups; inside a block, segment by segment over the block's
    groups, routes fastest. GB = 1 keeps a group's four routes and all its segments in flight together (their shared
    input and merged output can stay in L2); a larger GB spaces the segments of a row further apart, so that a
    segment's predecessor is usually finished when it looks back.
    """
    n_flags = tl.num_programs(0)
    ticket = tl.atomic_add(flag_ptr + n_flags, 1, sem='relaxed')
    n_groups = n_flags // (n_routes * n_seg)
    k = ticket % n_routes
    rest = ticket // n_routes
    block = rest // (n_seg * GB)
    within = rest - block * (n_seg * GB)
    gb = tl.minimum(GB, n_groups - block * GB)
    group = block * GB + within % gb
    return group // n_cblk, k, group % n_cblk, within // gb


@triton.jit
def _route_start(k, t, L, H, W, CROSS: tl.constexpr):
    """Image position (row-major index) of step t of route k, and the position step to the next one: routes go
    row-major, column-major, and both reversed. Unrouted: position t, step 1."""
    if CROSS:
        rev = k >= 2
        col = (k % 2) == 1
        tt = tl.where(rev, L - 1 - t, t)
        dp = tl.where(col, W, 1)
        return tl.where(col, (tt % H) * W + tt // H, tt), tl.where(rev, -dp, dp)
    else:
        return t, 1


@triton.jit
def _next_position(p, dp, L, CROSS: tl.constexpr):
    """The position after p on its route; a column route wraps from the last row to the next column. Past the route's
    end the result is meaningless (such steps are masked)."""
    p = p + dp
    if CROSS:
        p = tl.where(p >= L, p - (L - 1), p)
        p = tl.where(p < 0, p + (L - 1), p)
    return p


@triton.jit
def _chunk_loads(u_base, dl_base, B_base, C_base, k, t0, L, H, W, c, n, mc, mn,
                 s_uc, s_up, s_dc, s_dp, s_Bn, s_Bp, s_Cn, s_Cp, WITH_C: tl.constexpr, CROSS: tl.constexpr,
                 T: tl.constexpr):
    """Steps t0 .. t0 + T - 1 of a row in their stored dtype, as tuples over the steps: u and delta (BC,), B and C
    (NP,) (C only ``WITH_C``), the route walked once for all four. Steps at or past L are masked off (zeros); a chunk
    past L loads nothing."""
    p, dp = _route_start(k, t0, L, H, W, CROSS)
    us = ()
    ds = ()
    bs = ()
    cs = ()
    for j in tl.static_range(T):
        valid = t0 + j < L
        us = us + (tl.load(u_base + p * s_up + c * s_uc, mask=valid & mc, other=0.0),)
        ds = ds + (tl.load(dl_base + p * s_dp + c * s_dc, mask=valid & mc, other=0.0),)
        bs = bs + (tl.load(B_base + p * s_Bp + n * s_Bn, mask=valid & mn, other=0.0),)
        if WITH_C:
            cs = cs + (tl.load(C_base + p * s_Cp + n * s_Cn, mask=valid & mn, other=0.0),)
        p = _next_position(p, dp, L, CROSS)
    return us, ds, bs, cs


@triton.jit
def _operand_steps(base, k, t0, L, H, W, idx, m_idx, s_idx, s_p, CROSS: tl.constexpr, T: tl.constexpr):
    """One operand at steps t0 .. t0 + T - 1 of a row, a tuple of tiles over ``idx`` (channels or states; zeros at
    or past L)."""
    p, dp = _route_start(k, t0, L, H, W, CROSS)
    xs = ()
    for j in tl.static_range(T):
        xs = xs + (tl.load(base + p * s_p + idx * s_idx, mask=(t0 + j < L) & m_idx, other=0.0),)
        p = _next_position(p, dp, L, CROSS)
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
                   GB, REVERSE: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, NP: tl.constexpr,
                   BC: tl.constexpr):
    """This program's work (segments numbered from the row's end when REVERSE) and per-channel parameters: batch
    (int64), route (int32, int64), segment, row, channel and state indices and masks, the channels' index among the
    routes' channels, A (NP, BC), delta_bias and D (BC,) in float32, the (NP, BC) state offsets, the segment's chunks
    [first, end)."""
    b, k, cbk, s = _ticket(flag_ptr, n_routes, n_cblk, n_seg, GB)
    if REVERSE:
        s = n_seg - 1 - s
    row = (b * n_routes + k) * n_cblk + cbk
    k64 = k.to(tl.int64)
    c = cbk * BC + tl.arange(0, BC)
    n = tl.arange(0, NP)
    mc, mn = c < channels, n < n_state
    ch = k64 * channels + c
    A = tl.load(A_ptr + ch[None, :] * n_state + n[:, None], mask=mn[:, None] & mc[None, :], other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + ch, mask=mc, other=0.0).to(tl.float32) if HAS_BIAS else 0.0
    D = tl.load(D_ptr + ch, mask=mc, other=0.0).to(tl.float32) if HAS_D else 0.0
    offs = n[:, None] * BC + tl.arange(0, BC)[None, :]
    first = s * seg_chunks
    return (b.to(tl.int64), k, k64, s, row, c, n, mc, mn, ch, A, bias, D, offs, first,
            tl.minimum(first + seg_chunks, n_chunks))


# Sizes and strides vary with the model's stage, image size and projection width; specialising on them (value 1,
# divisibility by 16) would compile the long unrolled kernels once per stage. Only the channel strides (1 in the
# model's channel-last layouts) are specialised.
_SIZES = ['L', 'H', 'W', 'n_state', 'channels', 'n_routes', 'n_cblk', 'n_chunks', 'seg_chunks', 'n_seg', 'GB']
_STRIDES_FWD = ['s_ub', 's_uk', 's_up', 's_db', 's_dk', 's_dp', 's_Bb', 's_Bk', 's_Bn', 's_Bp', 's_Cb', 's_Ck', 's_Cn',
                's_Cp', 's_yb', 's_yk', 's_yp']
_STRIDES_BWD = _STRIDES_FWD[:-3] + ['s_gb', 's_gk', 's_gp', 's_dub', 's_duk', 's_dup', 's_ddb', 's_ddk', 's_ddp',
                                    's_dBb', 's_dBk', 's_dBn', 's_dBp', 's_dCb', 's_dCk', 's_dCn', 's_dCp']


@triton.jit(do_not_specialize=_SIZES + _STRIDES_FWD)
def scan_fwd_kernel(
        u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, states_ptr, status_ptr, flag_ptr,
        L, H, W, n_state, channels, n_routes, n_cblk, n_chunks, seg_chunks, n_seg, GB,
        s_ub, s_uk, s_uc, s_up, s_db, s_dk, s_dc, s_dp, s_Bb, s_Bk, s_Bn, s_Bp, s_Cb, s_Ck, s_Cn, s_Cp,
        s_yb, s_yk, s_yc, s_yp,
        CROSS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        T: tl.constexpr, NP: tl.constexpr, BC: tl.constexpr, WIN: tl.constexpr, PF: tl.constexpr,
        SAVE_STATES: tl.constexpr):
    """Forward over one segment (seg_chunks chunks of T steps) of one row, the state carried between chunks.

    With several segments per row, a first pass over the segment computes its aggregate for the look-back; the
    second pass produces y from the carried-in state. The state entering every chunk is saved for the backward
    (SAVE_STATES), plus the row's final state. y is stored, or atomically added when the four routes merge into it
    (CROSS).
    """
    b64, k, k64, s, row, c, n, mc, mn, ch, A, bias, D, offs, first, end = _program_setup(
        flag_ptr, A_ptr, D_ptr, bias_ptr, n_state, channels, n_routes, n_cblk, n_chunks, seg_chunks, n_seg, GB,
        False, HAS_D, HAS_BIAS, NP, BC)
    u_base = u_ptr + b64 * s_ub + k64 * s_uk
    dl_base = dl_ptr + b64 * s_db + k64 * s_dk
    B_base = B_ptr + b64 * s_Bb + k64 * s_Bk
    C_base = C_ptr + b64 * s_Cb + k64 * s_Ck
    y_base = y_ptr + b64 * s_yb + k64 * s_yk

    h = tl.zeros((NP, BC), tl.float32)
    if n_seg > 1:
        agg_a = tl.full((NP, BC), 1.0, tl.float32)
        agg_b = tl.zeros((NP, BC), tl.float32)
        nxt = _chunk_loads(u_base, dl_base, B_base, C_base, k, first * T, L, H, W, c, n, mc, mn, s_uc, s_up, s_dc,
                           s_dp, s_Bn, s_Bp, s_Cn, s_Cp, False, CROSS, T)
        for ci in range(first, end):
            us, ds, bs, cs = nxt
            t_next = tl.where(ci + 1 < end, ci + 1, n_chunks) * T
            if PF:
                nxt = _chunk_loads(u_base, dl_base, B_base, C_base, k, t_next, L, H, W, c, n, mc, mn, s_uc, s_up,
                                   s_dc, s_dp, s_Bn, s_Bp, s_Cn, s_Cp, False, CROSS, T)
            for j in tl.static_range(T):
                a, x, _, _, _ = _step_terms(us[j], ds[j], bs[j], A, bias, HAS_BIAS, SOFTPLUS)
                valid = ci * T + j < L
                agg_b = tl.where(valid, a * agg_b + x, agg_b)
                agg_a = tl.where(valid, a * agg_a, agg_a)
            if not PF:
                nxt = _chunk_loads(u_base, dl_base, B_base, C_base, k, t_next, L, H, W, c, n, mc, mn, s_uc, s_up,
                                   s_dc, s_dp, s_Bn, s_Bp, s_Cn, s_Cp, False, CROSS, T)
        h = _chain_segment(flag_ptr, status_ptr, row, s, n_seg, agg_a, agg_b, offs, False, NP, BC, WIN)

    n_slots = n_chunks + 1 if SAVE_STATES else 1
    row_states = states_ptr + row.to(tl.int64) * n_slots * NP * BC
    nxt = _chunk_loads(u_base, dl_base, B_base, C_base, k, first * T, L, H, W, c, n, mc, mn, s_uc, s_up, s_dc, s_dp,
                       s_Bn, s_Bp, s_Cn, s_Cp, True, CROSS, T)
    for ci in range(first, end):
        us, ds, bs, cs = nxt
        t_next = tl.where(ci + 1 < end, ci + 1, n_chunks) * T  # past the segment: past L, which loads nothing
        if PF:
            nxt = _chunk_loads(u_base, dl_base, B_base, C_base, k, t_next, L, H, W, c, n, mc, mn, s_uc, s_up, s_dc,
                               s_dp, s_Bn, s_Bp, s_Cn, s_Cp, True, CROSS, T)
        if SAVE_STATES:
            tl.store(row_states + ci * NP * BC + offs, h)
        p, dp = _route_start(k, ci * T, L, H, W, CROSS)
        for j in tl.static_range(T):
            valid = ci * T + j < L
            a, x, u, _, _ = _step_terms(us[j], ds[j], bs[j], A, bias, HAS_BIAS, SOFTPLUS)
            h = tl.where(valid, a * h + x, h)
            y = tl.sum(cs[j].to(tl.float32)[:, None] * h, 0) + D * u
            if CROSS:
                tl.atomic_add(y_base + p * s_yp + c * s_yc, y, mask=valid & mc, sem='relaxed')
            else:
                tl.store(y_base + p * s_yp + c * s_yc, y.to(y_ptr.dtype.element_ty), mask=valid & mc)
            p = _next_position(p, dp, L, CROSS)
        if not PF:
            nxt = _chunk_loads(u_base, dl_base, B_base, C_base, k, t_next, L, H, W, c, n, mc, mn, s_uc, s_up, s_dc,
                               s_dp, s_Bn, s_Bp, s_Cn, s_Cp, True, CROSS, T)
    tl.store(row_states + (n_slots - 1) * NP * BC + offs, h, mask=(offs >= 0) & (end == n_chunks))


@triton.jit
def _decay_at(dl_base, k, t, L, H, W, c, mc, s_dc, s_dp, A, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
              CROSS: tl.constexpr):
    """a_t = exp(dt_t A) of step t of a row, (NP, BC); zero at or past L (no adjoint flows in from there)."""
    p, _ = _route_start(k, t, L, H, W, CROSS)
    d = tl.load(dl_base + p * s_dp + c * s_dc, mask=(t < L) & mc, other=0.0)
    _, dt = _dt(d, bias, HAS_BIAS, SOFTPLUS)
    return tl.where(t < L, tl.exp(dt[None, :] * A), 0.0)


@triton.jit(do_not_specialize=_SIZES + _STRIDES_BWD)
def scan_bwd_kernel(
        u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, gy_ptr, states_ptr, status_ptr, flag_ptr,
        du_ptr, ddl_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
        L, H, W, n_state, channels, n_routes, n_cblk, n_chunks, seg_chunks, n_seg, GB,
        s_ub, s_uk, s_uc, s_up, s_db, s_dk, s_dc, s_dp, s_Bb, s_Bk, s_Bn, s_Bp, s_Cb, s_Ck, s_Cn, s_Cp,
        s_gb, s_gk, s_gc, s_gp, s_dub, s_duk, s_duc, s_dup, s_ddb, s_ddk, s_ddc, s_ddp,
        s_dBb, s_dBk, s_dBn, s_dBp, s_dCb, s_dCk, s_dCn, s_dCp,
        CROSS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        T: tl.constexpr, NP: tl.constexpr, BC: tl.constexpr, WIN: tl.constexpr, PF: tl.constexpr):
    """Backward over one segment of one row, chunks taken from its end, the adjoint carried between chunks.
    With dlog = d loss / d(dt * A):

        g_t = C_t gy_t + a_{t+1} g_{t+1}      dlog_t = g_t * a_t h_{t-1}
        d dt = sum_n dlog * A + (sum_n g B) u   d u = (sum_n g B) dt + D gy   dA = sum_t dlog dt
        dB = sum_c g dt u                        dC = sum_c gy h               dD = sum_t gy u

    h inside a chunk is recomputed from the forward's saved state entering it. With several segments per row, a
    first pass computes the segment's adjoint aggregate for the (reversed) look-back. du is atomically added when
    routes share the input (CROSS); dA, dB, dC, dD and d bias always are.
    """
    b64, k, k64, s, row, c, n, mc, mn, ch, A, bias, D, offs, first, end = _program_setup(
        flag_ptr, A_ptr, D_ptr, bias_ptr, n_state, channels, n_routes, n_cblk, n_chunks, seg_chunks, n_seg, GB,
        True, HAS_D, HAS_BIAS, NP, BC)
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
                       s_dp, s_Bn, s_Bp, s_Cn, s_Cp, True, CROSS, T)
    nxt_gy = _operand_steps(gy_base, k, (end - 1) * T, L, H, W, c, mc, s_gc, s_gp, CROSS, T)
    for i in range(end - first):
        ci = end - 1 - i
        t0 = ci * T
        us, ds, bs, cs = nxt
        gys = nxt_gy
        t_prev = tl.where(ci > first, t0 - T, n_chunks * T)  # before the segment: past L, which loads nothing
        if PF:
            nxt = _chunk_loads(u_base, dl_base, B_base, C_base, k, t_prev, L, H, W, c, n, mc, mn, s_uc, s_up, s_dc,
                               s_dp, s_Bn, s_Bp, s_Cn, s_Cp, True, CROSS, T)
            nxt_gy = _operand_steps(gy_base, k, t_prev, L, H, W, c, mc, s_gc, s_gp, CROSS, T)
        # the chunk's states, recomputed forward from the state saved at its start
        h = tl.load(row_states + ci * NP * BC + offs)
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
        p, dp = _route_start(k, tl.minimum(t0 + T - 1, L - 1), L, H, W, CROSS)
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
            p = tl.where(valid, _next_position(p, -dp, L, CROSS), p)
        if not PF:
            nxt = _chunk_loads(u_base, dl_base, B_base, C_base, k, t_prev, L, H, W, c, n, mc, mn, s_uc, s_up, s_dc,
                               s_dp, s_Bn, s_Bp, s_Cn, s_Cp, True, CROSS, T)
            nxt_gy = _operand_steps(gy_base, k, t_prev, L, H, W, c, mc, s_gc, s_gp, CROSS, T)
    tl.atomic_add(dA_ptr + ch[None, :] * n_state + n[:, None], acc_dA, mask=mnc, sem='relaxed')
    if HAS_D:
        tl.atomic_add(dD_ptr + ch, acc_dD, mask=mc, sem='relaxed')
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + ch, acc_dbias, mask=mc, sem='relaxed')


@triton.jit(do_not_specialize=['L', 'H', 'W', 'channels'])
def route_gather_kernel(src_ptr, dst_ptr, L, H, W, channels,
                        s_sb, s_sk, s_sc, s_sh, s_sw, s_db, s_dk, s_dc,
                        INVERSE: tl.constexpr, SUM: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """dst[b, k, c, i] = src[b, k, c, j_k(i)] (or the sum over k when SUM), with src's (H, W) read row-major.

    Forward map (cross-scan): j_k(i) = image position of step i of route k. Inverse map (cross-merge): j_k(i) = step
    of route k that visits image position i.
    """
    pid_bk = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    i = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = (c < channels)[:, None] & (i < L)[None, :]
    if SUM:
        b = pid_bk.to(tl.int64)
        k_first, k_last = 0, 4
    else:
        b = (pid_bk // 4).to(tl.int64)
        k_first = pid_bk % 4
        k_last = k_first + 1
    acc = tl.zeros((BLOCK_C, BLOCK_L), tl.float32)
    for k in range(k_first, k_last):
        if INVERSE:
            base = tl.where(k % 2 == 1, (i % W) * H + i // W, i)
            j = tl.where(k >= 2, L - 1 - base, base)
        else:
            tt = tl.where(k >= 2, L - 1 - i, i)
            j = tl.where(k % 2 == 1, (tt % H) * W + tt // H, tt)
        src = src_ptr + b * s_sb + k * s_sk + c[:, None] * s_sc + ((j // W) * s_sh + (j % W) * s_sw)[None, :]
        acc += tl.load(src, mask=mask, other=0.0).to(tl.float32)
    if SUM:
        dst = dst_ptr + b * s_db + c[:, None] * s_dc + i[None, :]
    else:
        dst = dst_ptr + b * s_db + k_first * s_dk + c[:, None] * s_dc + i[None, :]
    tl.store(dst, acc.to(dst_ptr.dtype.element_ty), mask=mask)
