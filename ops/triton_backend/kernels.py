"""Triton kernels: route gathers for cross-scan/merge, and the chunked selective scan (forward and backward).

Scan layout. A *row* is one (batch, route k, block of BC channels); the unfused selective scan is the special case
"one route per channel group, identity order". A program walks a *segment* of a row, chunk by chunk (T steps each),
carrying the state in registers:

    h_t = a_t * h_{t-1} + b_t,   a_t = exp(dt_t * A),  b_t = dt_t * B_t * u_t,  y_t = <C_t, h_t> + D * u_t

Inside a chunk, ``tl.associative_scan`` on (a, b) pairs gives every step as an affine map h_t = P_t * h_in + S_t of
the state entering the chunk. A row is cut into several segments only when rows alone are too few to fill the GPU;
the segments are then chained by a decoupled look-back (as in single-pass prefix sums): a program first computes its
segment's aggregate (P, S), publishes it, reads its predecessors' aggregates or inclusive states, a window of WIN
segments per round trip, until it meets an inclusive state, publishes its own inclusive state and only then makes its
outputs. Programs take their work from an atomic ticket, so a program only ever waits on programs that have already
started: no deadlock whatever order the hardware schedules them in.

The backward runs the same machinery over reversed time for the adjoint state g_t = C_t gy_t + a_{t+1} g_{t+1},
recomputes h inside each chunk from the state the forward saved at the chunk's start, and forms every gradient from
(h, g) in registers.
"""
import triton
import triton.language as tl

# flags of the look-back: nothing published yet, aggregate published, inclusive state published
_AGGREGATE = tl.constexpr(1)
_INCLUSIVE = tl.constexpr(2)


@triton.jit
def _combine(a1, b1, a2, b2):
    """Compose h -> a1 * h + b1, then h -> a2 * h + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    """log(1 + exp(x)) (x itself above 20, as torch), with an accurate log1p for small exp(x)."""
    z = tl.exp(x)
    w = 1.0 + z
    sp = tl.where(w == 1.0, z, tl.log(w) * tl.fdiv(z, w - 1.0))
    return tl.where(x > 20.0, x, sp)


@triton.jit
def _route_hw(k, t, L, H, W, CROSS: tl.constexpr):
    """Image row and column of step t of route k: row-major, column-major, and both reversed. Unrouted: (0, t)."""
    if CROSS:
        tt = tl.where(k >= 2, L - 1 - t, t)
        col = (k % 2) == 1
        return tl.where(col, tt % H, tt // W), tl.where(col, tt // H, tt % W)
    else:
        return t * 0, t


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
def _tile_ptrs(base, idx, s_idx, hh, ww, s_h, s_w):
    """Pointers of a (T, len(idx)) tile: steps along rows (image positions hh, ww), channels or states along idx."""
    return base + idx[None, :] * s_idx + (hh * s_h + ww * s_w)[:, None]


@triton.jit
def _chunk_loads(u_base, dl_base, B_base, C_base, k, ci, valid, c, n, mc, mn, L, H, W,
                 s_uc, s_uh, s_uw, s_dc, s_dh, s_dw, s_Bn, s_Bh, s_Bw, s_Cn, s_Ch, s_Cw,
                 CROSS: tl.constexpr, T: tl.constexpr):
    """Chunk ci's tiles in their stored dtype (all masked off unless ``valid``): u and delta (T, BC), B and C (T, NP).
    Issued PF chunks ahead of their use, so that their latency overlaps the work on the chunks before."""
    t = ci * T + tl.arange(0, T)
    mt = (t < L) & valid
    hh, ww = _route_hw(k, t, L, H, W, CROSS)
    m2 = mt[:, None] & mc[None, :]
    mtn = mt[:, None] & mn[None, :]
    return (tl.load(_tile_ptrs(u_base, c, s_uc, hh, ww, s_uh, s_uw), mask=m2, other=0.0),
            tl.load(_tile_ptrs(dl_base, c, s_dc, hh, ww, s_dh, s_dw), mask=m2, other=0.0),
            tl.load(_tile_ptrs(B_base, n, s_Bn, hh, ww, s_Bh, s_Bw), mask=mtn, other=0.0),
            tl.load(_tile_ptrs(C_base, n, s_Cn, hh, ww, s_Ch, s_Cw), mask=mtn, other=0.0))


@triton.jit
def _queue_start(u_base, dl_base, B_base, C_base, k, start, stop, c, n, mc, mn, L, H, W,
                 s_uc, s_uh, s_uw, s_dc, s_dh, s_dw, s_Bn, s_Bh, s_Bw, s_Cn, s_Ch, s_Cw,
                 CROSS: tl.constexpr, T: tl.constexpr, PF: tl.constexpr, STEP: tl.constexpr):
    """The prefetch queue before a loop over chunks start, start + STEP, ... (up to ``stop``, excluded when STEP is
    1, included when it is -1): the first PF chunks in slots 0, 1, 2; unused slots repeat slot 0."""
    u0, d0, B0, C0 = _chunk_loads(u_base, dl_base, B_base, C_base, k, start, (start < stop) if STEP > 0 else
                                  (start >= stop), c, n, mc, mn, L, H, W, s_uc, s_uh, s_uw, s_dc, s_dh, s_dw,
                                  s_Bn, s_Bh, s_Bw, s_Cn, s_Ch, s_Cw, CROSS, T)
    u1, d1, B1, C1 = u0, d0, B0, C0
    u2, d2, B2, C2 = u0, d0, B0, C0
    if PF >= 2:
        u1, d1, B1, C1 = _chunk_loads(u_base, dl_base, B_base, C_base, k, start + STEP, (start + 1 < stop) if STEP > 0
                                      else (start - 1 >= stop), c, n, mc, mn, L, H, W, s_uc, s_uh, s_uw, s_dc, s_dh,
                                      s_dw, s_Bn, s_Bh, s_Bw, s_Cn, s_Ch, s_Cw, CROSS, T)
    if PF >= 3:
        u2, d2, B2, C2 = _chunk_loads(u_base, dl_base, B_base, C_base, k, start + 2 * STEP, (start + 2 < stop)
                                      if STEP > 0 else (start - 2 >= stop), c, n, mc, mn, L, H, W, s_uc, s_uh, s_uw,
                                      s_dc, s_dh, s_dw, s_Bn, s_Bh, s_Bw, s_Cn, s_Ch, s_Cw, CROSS, T)
    return u0, d0, B0, C0, u1, d1, B1, C1, u2, d2, B2, C2


@triton.jit
def _advance(u_base, dl_base, B_base, C_base, k, ci, stop, c, n, mc, mn, L, H, W,
             s_uc, s_uh, s_uw, s_dc, s_dh, s_dw, s_Bn, s_Bh, s_Bw, s_Cn, s_Ch, s_Cw,
             u0, d0, B0, C0, u1, d1, B1, C1, u2, d2, B2, C2,
             CROSS: tl.constexpr, T: tl.constexpr, PF: tl.constexpr, STEP: tl.constexpr):
    """Shift the prefetch queue (slot 0 is used next) and load the chunk PF steps past chunk ci into its tail."""
    ahead = ci + STEP * PF
    nu, nd, nB, nC = _chunk_loads(u_base, dl_base, B_base, C_base, k, ahead, (ahead < stop) if STEP > 0 else
                                  (ahead >= stop), c, n, mc, mn, L, H, W, s_uc, s_uh, s_uw, s_dc, s_dh, s_dw,
                                  s_Bn, s_Bh, s_Bw, s_Cn, s_Ch, s_Cw, CROSS, T)
    if PF == 1:
        return nu, nd, nB, nC, u1, d1, B1, C1, u2, d2, B2, C2
    elif PF == 2:
        return u1, d1, B1, C1, nu, nd, nB, nC, u2, d2, B2, C2
    else:
        return u1, d1, B1, C1, u2, d2, B2, C2, nu, nd, nB, nC


@triton.jit
def _adjoint_loads(dl_base, gy_base, k, ci, valid, c, mc, L, H, W, s_dc, s_dh, s_dw, s_gc, s_gh, s_gw,
                   CROSS: tl.constexpr, T: tl.constexpr):
    """The backward's extra tiles of chunk ci: delta one step ahead (for a_{t+1}) and the output gradient."""
    t = ci * T + tl.arange(0, T)
    hh, ww = _route_hw(k, t, L, H, W, CROSS)
    hn, wn = _route_hw(k, t + 1, L, H, W, CROSS)
    return (tl.load(_tile_ptrs(dl_base, c, s_dc, hn, wn, s_dh, s_dw),
                    mask=((t + 1 < L) & valid)[:, None] & mc[None, :], other=0.0),
            tl.load(_tile_ptrs(gy_base, c, s_gc, hh, ww, s_gh, s_gw), mask=((t < L) & valid)[:, None] & mc[None, :],
                    other=0.0))


@triton.jit
def _dt(delta, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """The pre-activation delta + bias, and dt = its softplus (or itself)."""
    pre = delta.to(tl.float32)
    if HAS_BIAS:
        pre += bias
    return pre, (_softplus(pre) if SOFTPLUS else pre)


@triton.jit
def _recurrence_terms(u, delta, Bt, mt, A, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(a, b) of h_t = a_t h_{t-1} + b_t on a (T, NP, BC) tile, and u, delta's pre-activation, dt and B_t in float32.
    Steps past L keep the state (a = 1, b = 0), so a chunk's last row is its end state."""
    u = u.to(tl.float32)
    Bt = Bt.to(tl.float32)
    pre, dt = _dt(delta, bias, HAS_BIAS, SOFTPLUS)
    m3 = mt[:, None, None]
    a = tl.where(m3, tl.exp(dt[:, None, :] * A[None, :, :]), 1.0)
    b = tl.where(m3, (dt * u)[:, None, :] * Bt[:, :, None], 0.0)
    return a, b, u, pre, dt, Bt


@triton.jit
def _pick(x, mask):
    """The row of a (T, NP, BC) tile where the (T, 1, 1) mask holds."""
    return tl.sum(tl.where(mask, x, 0.0), 0)


@triton.jit(do_not_specialize=['L', 'H', 'W', 'n_state', 'channels', 'n_cblk', 'n_chunks', 'seg_chunks', 'n_seg',
                               'GB'])
def scan_fwd_kernel(
        u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, states_ptr, status_ptr, flag_ptr,
        L, H, W, n_state, channels, n_routes, n_cblk, n_chunks, seg_chunks, n_seg, GB,
        s_ub, s_uk, s_uc, s_uh, s_uw, s_db, s_dk, s_dc, s_dh, s_dw,
        s_Bb, s_Bk, s_Bn, s_Bh, s_Bw, s_Cb, s_Ck, s_Cn, s_Ch, s_Cw, s_yb, s_yk, s_yc, s_yh, s_yw,
        CROSS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        T: tl.constexpr, NP: tl.constexpr, BC: tl.constexpr, WIN: tl.constexpr, PF: tl.constexpr):
    """Forward over one segment (seg_chunks chunks of T steps) of one row, the state carried between chunks.

    With several segments per row, a first pass over the segment computes its aggregate for the look-back; the
    second pass produces y from the carried-in state. The state entering every chunk is saved for the backward,
    plus the row's final state.
    """
    b, k, cbk, s = _ticket(flag_ptr, n_routes, n_cblk, n_seg, GB)
    row = (b * n_routes + k) * n_cblk + cbk
    b, k = b.to(tl.int64), k.to(tl.int64)
    c = cbk * BC + tl.arange(0, BC)
    n = tl.arange(0, NP)
    mc, mn = c < channels, n < n_state
    ch = k * channels + c
    A = tl.load(A_ptr + ch[None, :] * n_state + n[:, None], mask=mn[:, None] & mc[None, :], other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + ch, mask=mc, other=0.0).to(tl.float32)[None, :] if HAS_BIAS else 0.0
    D = tl.load(D_ptr + ch, mask=mc, other=0.0).to(tl.float32)[None, :] if HAS_D else 0.0
    u_base = u_ptr + b * s_ub + k * s_uk
    dl_base = dl_ptr + b * s_db + k * s_dk
    B_base = B_ptr + b * s_Bb + k * s_Bk
    C_base = C_ptr + b * s_Cb + k * s_Ck
    y_base = y_ptr + b * s_yb + k * s_yk
    steps = tl.arange(0, T)
    last = (steps == T - 1)[:, None, None]
    offs = n[:, None] * BC + tl.arange(0, BC)[None, :]
    first = s * seg_chunks
    end = tl.minimum(first + seg_chunks, n_chunks)

    h = tl.zeros((NP, BC), tl.float32)
    if n_seg > 1:
        agg_a = tl.full((NP, BC), 1.0, tl.float32)
        agg_b = tl.zeros((NP, BC), tl.float32)
        u0, d0, B0, C0, u1, d1, B1, C1, u2, d2, B2, C2 = _queue_start(
            u_base, dl_base, B_base, C_base, k, first, end, c, n, mc, mn, L, H, W, s_uc, s_uh, s_uw, s_dc,
            s_dh, s_dw, s_Bn, s_Bh, s_Bw, s_Cn, s_Ch, s_Cw, CROSS, T, PF, 1)
        for ci in range(first, end):
            u_r, d_r, B_r = u0, d0, B0
            u0, d0, B0, C0, u1, d1, B1, C1, u2, d2, B2, C2 = _advance(
                u_base, dl_base, B_base, C_base, k, ci, end, c, n, mc, mn, L, H, W, s_uc, s_uh, s_uw, s_dc, s_dh,
                s_dw, s_Bn, s_Bh, s_Bw, s_Cn, s_Ch, s_Cw, u0, d0, B0, C0, u1, d1, B1, C1, u2, d2, B2, C2,
                CROSS, T, PF, 1)
            a, x, u, pre, dt, Bt = _recurrence_terms(u_r, d_r, B_r, ci * T + steps < L, A, bias, HAS_BIAS, SOFTPLUS)
            pa, ps = tl.associative_scan((a, x), 0, _combine)
            la = _pick(pa, last)
            agg_b = la * agg_b + _pick(ps, last)
            agg_a *= la
        row_flags = flag_ptr + row * n_seg
        row_status = status_ptr + row.to(tl.int64) * n_seg * 3 * NP * BC
        tl.store(row_status + s * 3 * NP * BC + offs, agg_a)
        _publish(row_flags + s, row_status + s * 3 * NP * BC + NP * BC + offs, agg_b, offs >= 0, _AGGREGATE)
        h = _look_back(row_flags, row_status, row_status + 2 * NP * BC, s, n_seg, 3 * NP * BC, 3 * NP * BC, offs,
                       offs, offs >= 0, False, NP, BC, WIN)
        _publish(row_flags + s, row_status + s * 3 * NP * BC + 2 * NP * BC + offs, agg_a * h + agg_b, offs >= 0,
                 _INCLUSIVE)

    row_states = states_ptr + row.to(tl.int64) * (n_chunks + 1) * NP * BC
    u0, d0, B0, C0, u1, d1, B1, C1, u2, d2, B2, C2 = _queue_start(
        u_base, dl_base, B_base, C_base, k, first, end, c, n, mc, mn, L, H, W, s_uc, s_uh, s_uw, s_dc,
        s_dh, s_dw, s_Bn, s_Bh, s_Bw, s_Cn, s_Ch, s_Cw, CROSS, T, PF, 1)
    for ci in range(first, end):
        u_r, d_r, B_r, C_r = u0, d0, B0, C0
        u0, d0, B0, C0, u1, d1, B1, C1, u2, d2, B2, C2 = _advance(
            u_base, dl_base, B_base, C_base, k, ci, end, c, n, mc, mn, L, H, W, s_uc, s_uh, s_uw, s_dc, s_dh, s_dw,
            s_Bn, s_Bh, s_Bw, s_Cn, s_Ch, s_Cw, u0, d0, B0, C0, u1, d1, B1, C1, u2, d2, B2, C2, CROSS, T, PF, 1)
        tl.store(row_states + ci * NP * BC + offs, h)
        t = ci * T + steps
        mt = t < L
        a, x, u, pre, dt, Bt = _recurrence_terms(u_r, d_r, B_r, mt, A, bias, HAS_BIAS, SOFTPLUS)
        pa, ps = tl.associative_scan((a, x), 0, _combine)
        hs = pa * h[None, :, :] + ps
        y = tl.sum(hs * C_r.to(tl.float32)[:, :, None], 1) + D * u
        hh, ww = _route_hw(k, t, L, H, W, CROSS)
        yp = _tile_ptrs(y_base, c, s_yc, hh, ww, s_yh, s_yw)
        m2 = mt[:, None] & mc[None, :]
        if CROSS:
            tl.atomic_add(yp, y, mask=m2, sem='relaxed')
        else:
            tl.store(yp, y.to(y_ptr.dtype.element_ty), mask=m2)
        h = _pick(hs, last)
    tl.store(row_states + n_chunks * NP * BC + offs, h, mask=(offs >= 0) & (end == n_chunks))


@triton.jit(do_not_specialize=['L', 'H', 'W', 'n_state', 'channels', 'n_cblk', 'n_chunks', 'seg_chunks', 'n_seg',
                               'GB'])
def scan_bwd_kernel(
        u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, gy_ptr, states_ptr, status_ptr, flag_ptr,
        du_ptr, ddl_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
        L, H, W, n_state, channels, n_routes, n_cblk, n_chunks, seg_chunks, n_seg, GB,
        s_ub, s_uk, s_uc, s_uh, s_uw, s_db, s_dk, s_dc, s_dh, s_dw,
        s_Bb, s_Bk, s_Bn, s_Bh, s_Bw, s_Cb, s_Ck, s_Cn, s_Ch, s_Cw, s_gb, s_gk, s_gc, s_gh, s_gw,
        s_dub, s_duk, s_duc, s_duh, s_duw, s_ddb, s_ddk, s_ddc, s_ddh, s_ddw,
        s_dBb, s_dBk, s_dBn, s_dBh, s_dBw, s_dCb, s_dCk, s_dCn, s_dCh, s_dCw,
        CROSS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        T: tl.constexpr, NP: tl.constexpr, BC: tl.constexpr, WIN: tl.constexpr, PF: tl.constexpr):
    """Backward over one segment of one row, chunks taken from its end, the adjoint carried between chunks.
    With dlog = d loss / d(dt * A):

        g_t = C_t gy_t + a_{t+1} g_{t+1}      dlog_t = g_t * a_t h_{t-1} = g_t * (h_t - b_t)
        d dt = sum_n dlog * A + (sum_n g B) u   d u = (sum_n g B) dt + D gy   dA = sum_t dlog dt
        dB = sum_c g dt u                        dC = sum_c gy h               dD = sum_t gy u

    h inside a chunk is recomputed from the forward's saved state entering it. With several segments per row, a
    first pass computes the segment's adjoint aggregate for the (reversed) look-back. du is atomically added when
    routes share the input (CROSS); dA, dB, dC, dD and d bias always are.
    """
    b, k, cbk, s_rev = _ticket(flag_ptr, n_routes, n_cblk, n_seg, GB)
    s = n_seg - 1 - s_rev
    row = (b * n_routes + k) * n_cblk + cbk
    b, k = b.to(tl.int64), k.to(tl.int64)
    c = cbk * BC + tl.arange(0, BC)
    n = tl.arange(0, NP)
    mc, mn = c < channels, n < n_state
    mnc = mn[:, None] & mc[None, :]
    ch = k * channels + c
    A = tl.load(A_ptr + ch[None, :] * n_state + n[:, None], mask=mnc, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + ch, mask=mc, other=0.0).to(tl.float32)[None, :] if HAS_BIAS else 0.0
    D = tl.load(D_ptr + ch, mask=mc, other=0.0).to(tl.float32)[None, :] if HAS_D else 0.0
    u_base = u_ptr + b * s_ub + k * s_uk
    dl_base = dl_ptr + b * s_db + k * s_dk
    B_base = B_ptr + b * s_Bb + k * s_Bk
    C_base = C_ptr + b * s_Cb + k * s_Ck
    gy_base = gy_ptr + b * s_gb + k * s_gk
    steps = tl.arange(0, T)
    row0 = (steps == 0)[:, None, None]
    offs = n[:, None] * BC + tl.arange(0, BC)[None, :]
    first = s * seg_chunks
    end = tl.minimum(first + seg_chunks, n_chunks)

    g = tl.zeros((NP, BC), tl.float32)  # adjoint entering the current chunk from the one after it
    if n_seg > 1:
        agg_a = tl.full((NP, BC), 1.0, tl.float32)
        agg_b = tl.zeros((NP, BC), tl.float32)
        for i in range(end - first):
            ci = end - 1 - i
            t = ci * T + steps
            d1, gy = _adjoint_loads(dl_base, gy_base, k, ci, True, c, mc, L, H, W, s_dc, s_dh, s_dw, s_gc, s_gh, s_gw,
                                    CROSS, T)
            hh, ww = _route_hw(k, t, L, H, W, CROSS)
            Ct = tl.load(_tile_ptrs(C_base, n, s_Cn, hh, ww, s_Ch, s_Cw), mask=(t < L)[:, None] & mn[None, :],
                         other=0.0).to(tl.float32)
            _, dt_next = _dt(d1, bias, HAS_BIAS, SOFTPLUS)
            a_next = tl.where((t + 1 < L)[:, None, None], tl.exp(dt_next[:, None, :] * A[None, :, :]), 0.0)
            ra, rs = tl.associative_scan((a_next, Ct[:, :, None] * gy.to(tl.float32)[:, None, :]), 0, _combine,
                                         reverse=True)
            fa = _pick(ra, row0)
            agg_b = fa * agg_b + _pick(rs, row0)
            agg_a *= fa
        row_flags = flag_ptr + row * n_seg
        row_status = status_ptr + row.to(tl.int64) * n_seg * 3 * NP * BC
        tl.store(row_status + s * 3 * NP * BC + offs, agg_a)
        _publish(row_flags + s, row_status + s * 3 * NP * BC + NP * BC + offs, agg_b, offs >= 0, _AGGREGATE)
        g = _look_back(row_flags, row_status, row_status + 2 * NP * BC, s, n_seg, 3 * NP * BC, 3 * NP * BC, offs,
                       offs, offs >= 0, True, NP, BC, WIN)
        _publish(row_flags + s, row_status + s * 3 * NP * BC + 2 * NP * BC + offs, agg_a * g + agg_b, offs >= 0,
                 _INCLUSIVE)

    row_states = states_ptr + row.to(tl.int64) * (n_chunks + 1) * NP * BC
    acc_dA = tl.zeros((NP, BC), tl.float32)
    acc_dD = tl.zeros((BC,), tl.float32)
    acc_dbias = tl.zeros((BC,), tl.float32)
    u0, d0, B0, C0, u1, d1, B1, C1, u2, d2, B2, C2 = _queue_start(
        u_base, dl_base, B_base, C_base, k, end - 1, first, c, n, mc, mn, L, H, W, s_uc, s_uh, s_uw, s_dc,
        s_dh, s_dw, s_Bn, s_Bh, s_Bw, s_Cn, s_Ch, s_Cw, CROSS, T, PF, -1)
    d1_n, gy_n = _adjoint_loads(dl_base, gy_base, k, end - 1, True, c, mc, L, H, W, s_dc, s_dh, s_dw, s_gc, s_gh,
                                s_gw, CROSS, T)
    for i in range(end - first):
        ci = end - 1 - i
        u_r, d_r, B_r, C_r = u0, d0, B0, C0
        u0, d0, B0, C0, u1, d1, B1, C1, u2, d2, B2, C2 = _advance(
            u_base, dl_base, B_base, C_base, k, ci, first, c, n, mc, mn, L, H, W, s_uc, s_uh, s_uw, s_dc, s_dh, s_dw,
            s_Bn, s_Bh, s_Bw, s_Cn, s_Ch, s_Cw, u0, d0, B0, C0, u1, d1, B1, C1, u2, d2, B2, C2, CROSS, T, PF, -1)
        d1_r, gy_r = d1_n, gy_n
        d1_n, gy_n = _adjoint_loads(dl_base, gy_base, k, ci - 1, ci > first, c, mc, L, H, W, s_dc, s_dh, s_dw, s_gc,
                                    s_gh, s_gw, CROSS, T)
        t = ci * T + steps
        mt = t < L
        m2 = mt[:, None] & mc[None, :]
        mtn = mt[:, None] & mn[None, :]
        a, x, u, pre, dt, Bt = _recurrence_terms(u_r, d_r, B_r, mt, A, bias, HAS_BIAS, SOFTPLUS)
        _, dt_next = _dt(d1_r, bias, HAS_BIAS, SOFTPLUS)
        a_next = tl.where((t + 1 < L)[:, None, None], tl.exp(dt_next[:, None, :] * A[None, :, :]), 0.0)
        gy = gy_r.to(tl.float32)
        pa, ps = tl.associative_scan((a, x), 0, _combine)
        hs = pa * tl.load(row_states + ci * NP * BC + offs)[None, :, :] + ps
        ra, rs = tl.associative_scan((a_next, C_r.to(tl.float32)[:, :, None] * gy[:, None, :]), 0, _combine,
                                     reverse=True)
        gs = ra * g[None, :, :] + rs
        g = _pick(gs, row0)

        dlog = gs * (hs - x)
        gB = tl.sum(gs * Bt[:, :, None], 1)
        d_pre = tl.sum(dlog * A[None, :, :], 1) + gB * u
        if SOFTPLUS:
            d_pre *= tl.sigmoid(pre)
        acc_dA += tl.sum(dlog * dt[:, None, :], 0)
        if HAS_D:
            acc_dD += tl.sum(gy * u, 0)
        if HAS_BIAS:
            acc_dbias += tl.sum(tl.where(m2, d_pre, 0.0), 0)
        hh, ww = _route_hw(k, t, L, H, W, CROSS)
        tl.atomic_add(_tile_ptrs(dB_ptr + b * s_dBb + k * s_dBk, n, s_dBn, hh, ww, s_dBh, s_dBw),
                      tl.sum(gs * (dt * u)[:, None, :], 2), mask=mtn, sem='relaxed')
        tl.atomic_add(_tile_ptrs(dC_ptr + b * s_dCb + k * s_dCk, n, s_dCn, hh, ww, s_dCh, s_dCw),
                      tl.sum(hs * gy[:, None, :], 2), mask=mtn, sem='relaxed')
        tl.store(_tile_ptrs(ddl_ptr + b * s_ddb + k * s_ddk, c, s_ddc, hh, ww, s_ddh, s_ddw),
                 d_pre.to(ddl_ptr.dtype.element_ty), mask=m2)
        du = gB * dt + D * gy
        dup = _tile_ptrs(du_ptr + b * s_dub + k * s_duk, c, s_duc, hh, ww, s_duh, s_duw)
        if CROSS:
            tl.atomic_add(dup, du, mask=m2, sem='relaxed')
        else:
            tl.store(dup, du.to(du_ptr.dtype.element_ty), mask=m2)
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
