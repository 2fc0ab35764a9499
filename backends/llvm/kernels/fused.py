"""Fused ops: one loop nest per fused op, no intermediate buffers.

fused.elementwise: the body's ops become one composite scalar function (each op's entry of the
elementwise scalar table, in order), which `emit_map` runs over the result with the operands
broadcast by stride -- the same loop nest, vectorization and threading as a single
elementwise op. Every intermediate is rounded to its declared dtype (f16/bf16 through their
storage format; integers and bools already live in their own type), so the result is what the
interpreter computes running the body op by op, and bit for bit what the unfused kernels give.

fused.reduction (normalization over the last axis): rows in parallel; each pass over a row
(max/sum/write for softmax, mean/variance/write for layer_norm, sum of squares/write for
rms_norm) evaluates the prologue per element from the operands, and the last pass applies the
epilogue before the store. Other axes are refused (the interpreter runs the body).

fused.matmul: nn.matmul's own kernel writes the product into the result's buffer, then one
vectorized pass over it applies the epilogue in place (not inside the matmul's C tiles:
matmul.py's microkernels are shared between matmuls and accumulate C over K slices, so an
in-tile epilogue needs a hook there that does not exist yet).
"""
from __future__ import annotations

from ckir.dialects.nn._util import norm_axis
from llvmlite import ir

from ckir import dtypes as dt
from ckir.errors import CkirError
from ckir.types import TensorType, broadcast_shapes, same_dim

from ..codegen import (
    F64,
    I64,
    KERNEL_TY,
    Kernel,
    Layout,
    emitter,
    find_emitter,
    supported_dtype,
    tensor_types_supported,
)
from . import mathf
from .elementwise import (
    ELEMENTWISE,
    Scalar,
    compute_type,
    emit_elementwise,
    emit_map,
    from_compute,
    scalar_fn,
    to_compute,
)
from .reduce import BLOCK, Acc, loop, to_out


def _constant(o):
    """A numel-1 nn.constant in the body, as a compute-type constant."""
    d = o.results[0].type.dtype
    x = o.attrs["value"].array.reshape(())
    t = compute_type(d)
    if d.is_float:
        return ir.Constant(t, float(x))
    if d.is_bool:
        return ir.Constant(t, int(bool(x)))
    return ir.Constant(t, int(x))


def _round(b, x, d: dt.DType, cg):
    """Round a compute-type value to dtype `d` and back (a no-op unless the compute type is
    wider than the storage type: f16, bf16)."""
    if d is dt.f16 or d is dt.bf16:
        return to_compute(b, from_compute(b, x, d, cg), d, cg)
    return x


def op_in_dtypes(o) -> list:
    """The dtypes a body op's scalar function sees (as emit_elementwise passes them)."""
    if o.opdef.name == "nn.where":
        return [o.operands[1].type.dtype] * 3      # the compute type follows the branches
    return [v.type.dtype for v in o.operands]


def eval_ops(b, cg, ops, env: dict, terminator) -> dict:
    """Evaluate elementwise body ops in order on compute-type scalars bound in `env` (updated
    in place and returned). Each result is rounded to its dtype unless only `terminator` uses
    it (the store rounds it)."""
    for o in ops:
        r = o.results[0]
        if o.opdef.name == "nn.constant":
            env[r] = _constant(o)
            continue
        s = Scalar(b, cg, r.type.dtype, op_in_dtypes(o))
        y = scalar_fn(o)(s, [env[v] for v in o.operands], o)
        used_inside = any(u is not terminator for u, _ in r.uses)
        env[r] = _round(b, y, r.type.dtype, cg) if used_inside else y
    return env


def eval_body(b, cg, body, xs: list):
    """Evaluate an elementwise body on compute-type scalars `xs` (one per body argument):
    returns the compute-type values of the body's outputs."""
    ops = [o for o in body if o is not body.terminator]
    env = eval_ops(b, cg, ops, dict(zip(body.args, xs)), body.terminator)
    return [env[v] for v in body.outputs]


def body_supported(body, out_shape, skip=()) -> bool:
    """Whether every body op (but `skip`) has a scalar kernel for its dtypes/attributes and its
    result broadcasts to `out_shape` (so one loop over the result computes it)."""
    for o in body:
        if o is body.terminator or o in skip:
            continue
        if len(o.results) != 1 or o.regions:
            return False
        r = o.results[0]
        if type(r.type) is not TensorType or not supported_dtype(r.type.dtype):
            return False
        if o.opdef.name == "nn.constant":
            if r.type.numel != 1:
                return False
        elif o.opdef.name not in ELEMENTWISE or not emit_elementwise.supports(o):
            return False
        try:
            if broadcast_shapes(r.type.shape, out_shape) != tuple(out_shape):
                return False
        except CkirError:              # shapes that do not broadcast
            return False
    return True


def _supports_elementwise(op) -> bool:
    if len(op.results) != 1 or not tensor_types_supported(op) or not _operands_fit(op):
        return False
    return body_supported(op.regions[0], op.results[0].type.shape)


@emitter("fused.elementwise")
def emit_fused_elementwise(k, op):
    body = op.regions[0]
    ins = list(op.operands)

    def fn(s, xs, _op):
        return eval_body(s.b, s.cg, body, xs)[0]

    emit_map(k, op, op.results[0], ins, fn, [v.type.dtype for v in ins])


emit_fused_elementwise.supports = _supports_elementwise


def _operands_fit(op, vals=None) -> bool:
    out = op.results[0].type.shape
    for v in op.operands if vals is None else vals:
        try:
            if broadcast_shapes(v.type.shape, out) != tuple(out):
                return False
        except CkirError:              # shapes that do not broadcast
            return False
    return True


# --- fused.matmul: the product into the result's buffer, then the epilogue in one pass -------------
def _body_layout(k, op, alias: dict):
    """k's layout extended to body values: each body argument shares its operand's buffer and
    runtime dims, and each value of `alias` (body value -> op value) that of its target."""
    bi, di = dict(k.layout.buf_index), dict(k.layout.dim_index)
    pairs = list(zip(op.regions[0].args, op.operands)) + list(alias.items())
    for inner, outer in pairs:
        bi[inner] = bi[outer]
        for ax in range(outer.type.rank):
            if (outer, ax) in di:
                di[(inner, ax)] = di[(outer, ax)]
    return Layout(bi, di, k.layout.status_index, k.layout.op_index)


def _matmul_parts(op):
    """(the matmul, the other body ops): the matmul comes first but for scalar constants."""
    body = op.regions[0]
    ops = [o for o in body if o is not body.terminator]
    mm = next((o for o in ops if o.opdef.name == "nn.matmul"), ops[0])
    return mm, [o for o in ops if o is not mm]


def _supports_matmul(op) -> bool:
    if len(op.results) != 1 or not tensor_types_supported(op):
        return False
    body = op.regions[0]
    mm, epi = _matmul_parts(op)
    out = op.results[0]
    if mm.opdef.name != "nn.matmul" or not all(v in body.args for v in mm.operands):
        return False
    if mm.results[0].type != out.type or find_emitter(mm) is None:
        return False
    used = [op.operands[i] for i, a in enumerate(body.args) if any(a in o.operands for o in epi)]
    return _operands_fit(op, used) and body_supported(body, out.type.shape, skip={mm})


@emitter("fused.matmul")
def emit_fused_matmul(k, op):
    """The matmul kernel writes the product into the result's buffer (a kernel function of its
    own, called here), then one vectorized pass applies the epilogue in place. The product
    tile is not in registers any more, but it is never written to a buffer of its own and
    read back by separate kernels. (An epilogue applied in the microkernel's store of C would
    save that pass; matmul.py has no hook for it yet.)"""
    body = op.regions[0]
    mm, epi = _matmul_parts(op)
    out = op.results[0]
    lay = _body_layout(k, op, {mm.results[0]: out})
    kfn = ir.Function(k.mod, KERNEL_TY, k.cg.fresh("fused_matmul_product"))
    kfn.linkage = "internal"
    km = Kernel(k.mod, kfn, lay, mm, kfn.args[0], kfn.args[1], k.cg)
    find_emitter(mm)(km, mm)
    km.b.ret_void()
    k.b.call(kfn, [k.bufs, k.dims])
    # the epilogue reads the product (in the result's buffer) and the other operands it uses
    used = {v for o in epi for v in o.operands}
    args = [a for a in body.args if a in used]
    ins = [out] + [op.operands[body.args.index(a)] for a in args]

    def fn(s, xs, _op):
        env = {mm.results[0]: xs[0], **dict(zip(args, xs[1:]))}
        env = eval_ops(s.b, s.cg, epi, env, body.terminator)
        return env[body.outputs[0]]

    if out.type.rank == 0:
        emit_map(k, op, out, ins, fn, [v.type.dtype for v in ins])
        return

    def rows_body(kt, lo, hi):
        # the product is read at the very index it is stored to (emit_map's strided read of
        # it would look like a possible overlap to the vectorizer, which then runs scalar code)
        b = kt.b
        oshape = kt.shape(out)
        n = oshape[-1]
        others = ins[1:]
        strides = _row_strides(kt, others, out)

        def row(ri):
            rem = ri
            bases = [I64(0)] * len(others)
            for ax in range(len(oshape) - 2, -1, -1):
                idx = b.srem(rem, oshape[ax])
                rem = b.sdiv(rem, oshape[ax])
                bases = [b.add(bs, b.mul(idx, st[ax])) for bs, st in zip(bases, strides)]
            obase = b.mul(ri, n)

            def col(j):
                i = b.add(obase, j)
                xs = [to_compute(b, kt.load(out, i), out.type.dtype, kt.cg)]
                xs += [to_compute(b, kt.load(v, b.add(bs, b.mul(j, st[-1]))), v.type.dtype, kt.cg)
                       for v, bs, st in zip(others, bases, strides)]
                s = Scalar(b, kt.cg, out.type.dtype, [out.type.dtype])
                kt.store(out, i, from_compute(b, fn(s, xs, op), out.type.dtype, kt.cg))
            kt.loop(I64(0), n, col)
        kt.loop(lo, hi, row)

    def nrows(kk):
        r = I64(1)
        for dd in kk.shape(out)[:-1]:
            r = kk.mul(r, dd)
        return r
    k.parallel_range(nrows, rows_body, 16)


emit_fused_matmul.supports = _supports_matmul


# --- fused.reduction: per row, the prologue recomputed in each pass, the epilogue at the store ----
ROW_OPS = ("nn.softmax", "nn.log_softmax", "nn.layer_norm", "nn.rms_norm")
FLOATS = (dt.f32, dt.f64, dt.f16, dt.bf16)


def _row_parts(op):
    body = op.regions[0]
    ops = [o for o in body if o is not body.terminator]
    rows = [i for i, o in enumerate(ops) if o.opdef.name in ROW_OPS]
    if len(rows) != 1:
        return None
    i = rows[0]
    return ops[:i], ops[i], ops[i + 1:]


def _supports_reduction(op) -> bool:
    if len(op.results) != 1 or not tensor_types_supported(op):
        return False
    parts = _row_parts(op)
    if parts is None:
        return False
    _, r, _ = parts
    out = op.results[0].type
    x = r.operands[0].type
    if not out.rank or tuple(x.shape) != tuple(out.shape) or tuple(r.results[0].type.shape) != tuple(out.shape):
        return False
    if x.dtype not in FLOATS or norm_axis(r.attrs["axis"], out.rank) != out.rank - 1:
        return False
    return _operands_fit(op) and body_supported(op.regions[0], out.shape, skip={r})


def _row_strides(kt, ins, out):
    """Per operand: its element strides over the result's dims (0 where it broadcasts). The
    last one is a constant where the types tell (the usual case), so the loops over a row see
    unit-stride or invariant loads and vectorize."""
    rank = out.type.rank
    olast = out.type.shape[-1]
    res = []
    for v in ins:
        vsh = kt.shape(v)
        pad = rank - len(vsh)
        st, run = [], I64(1)
        for ax in range(rank - 1, -1, -1):
            if ax < pad:
                st.append(I64(0))
                continue
            d = vsh[ax - pad]
            st.append(kt.b.select(kt.b.icmp_signed("==", d, I64(1)), I64(0), run))
            run = kt.mul(run, d)
        st = st[::-1]
        last = v.type.shape[-1] if v.type.rank else 1
        if v.type.rank == 0 or last == 1:
            st[-1] = I64(0)
        elif same_dim(last, olast) and not (type(olast) is int and olast == 1):
            st[-1] = I64(1)
        res.append(st)
    return res


def _fmax(b, cg, a, x):
    """llvm.maximum: NaN-propagating (as nn.softmax's max), and a reduction the loop
    vectorizer recognizes (the select form with its NaN check is not)."""
    t = a.type
    name = "llvm.maximum.f64" if t == F64 else "llvm.maximum.f32"
    return b.call(cg.declare(name, ir.FunctionType(t, [t, t])), [a, x])


@emitter("fused.reduction")
def emit_fused_reduction(k, op):
    """Rows of the last axis in parallel; per row, as nn.softmax/nn.*_norm's kernels compute
    them (sums in f64 for f32/f16/bf16, max with NaN propagation), with each pass reading its
    input through the prologue and the final pass storing through the epilogue."""
    body = op.regions[0]
    pre, r, post = _row_parts(op)
    out = op.results[0]
    name = r.opdef.name
    d = r.operands[0].type.dtype
    ins = list(op.operands)
    eps = float(r.attrs.get("eps", 0.0) or 0.0)

    def body_fn(kt, lo, hi):
        b = kt.b
        oshape = kt.shape(out)
        n = oshape[-1]
        rank = len(oshape)
        strides = _row_strides(kt, ins, out)
        mx, sm, sq = Acc("max", d), Acc("sum", d), Acc("sumsq", d)
        at = sm.at

        def row(ri):
            rem = ri
            bases = [I64(0)] * len(ins)
            for ax in range(rank - 2, -1, -1):
                idx = b.srem(rem, oshape[ax])
                rem = b.sdiv(rem, oshape[ax])
                bases = [b.add(bs, b.mul(idx, st[ax])) for bs, st in zip(bases, strides)]

            def env_at(j):
                """The body's values up to the normalization's operands at column j."""
                env = {}
                for a, v, bs, st in zip(body.args, ins, bases, strides):
                    env[a] = to_compute(b, kt.load(v, b.add(bs, b.mul(j, st[-1]))), v.type.dtype, kt.cg)
                return eval_ops(b, kt.cg, pre, env, body.terminator)

            def x_at(j):
                return env_at(j)[r.operands[0]]

            obase = b.mul(ri, n)
            j_now = [None]              # the column the last pass is at (for elem)
            s = Scalar(b, kt.cg, d, [d])
            sw = Scalar(b, kt.cg, dt.f64 if at == F64 else d, [dt.f64 if at == F64 else d])
            nf = b.sitofp(n, at)
            if name in ("nn.softmax", "nn.log_softmax"):
                m = loop(kt, I64(0), n, [mx.ident(1)], lambda j, a: [_fmax(b, kt.cg, a[0], x_at(j))])[0]
                # as nn.softmax's kernel: f32/f64 keep exp(x - max) in the result's buffer for
                # the last pass; f32 sums blocks in f32 (full vector width), the blocks in f64
                keep_e = name == "nn.softmax" and d in (dt.f32, dt.f64) and out.type.dtype is d

                def ex(j, acc):
                    e = mathf.exp(s, b.fsub(x_at(j), m))
                    if keep_e:
                        kt.store(out, b.add(obase, j), e)
                    return [b.fadd(acc[0], e if acc[0].type == e.type else sm.widen(b, e), flags=("reassoc",))]
                if sm.at == sm.et or name != "nn.softmax":
                    tot = loop(kt, I64(0), n, [sm.ident(1)], ex)[0]
                else:
                    def block(j0, acc):
                        j1 = b.add(j0, I64(BLOCK))
                        j1 = b.select(b.icmp_signed("<", j1, n), j1, n)
                        part = loop(kt, j0, j1, [ir.Constant(sm.et, 0.0)], ex)[0]
                        return [b.fadd(acc[0], sm.widen(b, part))]
                    nb = b.mul(b.udiv(b.add(n, I64(BLOCK - 1)), I64(BLOCK)), I64(BLOCK))
                    tot = loop(kt, I64(0), nb, [sm.ident(1)], block, BLOCK)[0]
                if name == "nn.softmax":
                    inv = to_out(b, b.fdiv(ir.Constant(at, 1.0), tot), d)

                    def elem(env):
                        if keep_e:
                            return b.fmul(kt.load(out, b.add(obase, j_now[0])), inv)
                        return b.fmul(mathf.exp(s, b.fsub(env[r.operands[0]], m)), inv)
                else:
                    lse = to_out(b, mathf.log(sw, tot), d)
                    elem = lambda env: b.fsub(b.fsub(env[r.operands[0]], m), lse)
            else:
                center = name == "nn.layer_norm"
                mean = None
                if center:
                    tot = loop(kt, I64(0), n, [sm.ident(1)], lambda j, a: [
                        b.fadd(a[0], sm.widen(b, x_at(j)), flags=("reassoc",))])[0]
                    mean = to_out(b, b.fdiv(tot, nf), d)
                def sq_step(j, a):
                    w = sq.widen(b, b.fsub(x_at(j), mean) if center else x_at(j))
                    return [b.fadd(a[0], b.fmul(w, w), flags=("reassoc",))]
                ss = loop(kt, I64(0), n, [sq.ident(1)], sq_step)[0]
                ms = b.fadd(b.fdiv(ss, nf), ir.Constant(at, eps))
                rs = to_out(b, b.fdiv(ir.Constant(at, 1.0), mathf.sqrt(sw, ms)), d)
                params = list(r.operands[1:])

                def elem(env):
                    xv = env[r.operands[0]]
                    v = b.fmul(b.fsub(xv, mean) if center else xv, rs)
                    if len(params) > 0:
                        v = b.fmul(v, env[params[0]])
                    if len(params) > 1:
                        v = b.fadd(v, env[params[1]])
                    return v

            def store(j):
                j_now[0] = j
                env = env_at(j)
                y = elem(env)
                used_inside = any(u is not body.terminator for u, _ in r.results[0].uses)
                env[r.results[0]] = _round(b, y, d, kt.cg) if used_inside else y
                env = eval_ops(b, kt.cg, post, env, body.terminator)
                kt.store(out, b.add(obase, j), from_compute(b, env[body.outputs[0]], out.type.dtype, kt.cg))
            kt.loop(I64(0), n, store)
        kt.loop(lo, hi, row)

    def nrows(kk):
        n = I64(1)
        for dd in kk.shape(out)[:-1]:
            n = kk.mul(n, dd)
        return n
    k.parallel_range(nrows, body_fn, 16)


emit_fused_reduction.supports = _supports_reduction
