# Fused-type wrappers over libm shared by the kernels: float32 calls the float functions
# (expf, sqrtf), so float32 loops never round-trip through double.
from cython cimport floating
from libc.math cimport exp, expf, sqrt, sqrtf


cdef inline floating fexp(floating v) noexcept nogil:
    if floating is float:
        return expf(v)
    else:
        return exp(v)


cdef inline floating fsqrt(floating v) noexcept nogil:
    if floating is float:
        return sqrtf(v)
    else:
        return sqrt(v)
