"""nn.bitcast: each element's bits reinterpreted as another dtype of the same width (a copy
through an integer of that width, so no float canonicalizes a NaN payload); to bool, a zero
byte is false and any other byte true (stored as 0/1, as numpy's x.view(u8) != 0). A plain
loop (vectorized by LLVM), split across threads."""
from __future__ import annotations

import llvmlite.ir as ir

from ckir import dtypes as dt

from ..codegen import I8, emitter, tensor_types_supported


@emitter("nn.bitcast")
def emit_bitcast(k, op):
    x, y = op.operands[0], op.results[0]
    it = ir.IntType(x.type.dtype.bits)
    to_bool = y.type.dtype is dt.bool_

    def task(kt, lo, hi):
        b = kt.b
        xp, yp = kt.ptr(x), kt.ptr(y)

        def elem(i):
            v = b.load(b.gep(xp, [i], source_etype=it, inbounds=True), typ=it)
            if to_bool:
                v = b.zext(b.icmp_unsigned("!=", v, ir.Constant(it, 0)), I8)
            b.store(v, b.gep(yp, [i], source_etype=it, inbounds=True))
        kt.loop(lo, hi, elem)
    k.parallel_range(lambda kk: kk.numel(y), task, grain=1 << 16)


def _supports(op) -> bool:
    return tensor_types_supported(op) and op.operands[0].type.dtype.bits in (8, 16, 32, 64)


emit_bitcast.supports = _supports
