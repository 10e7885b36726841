# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Fused parameter updates: one pass over the weights, the gradient and the slots.

Every rule takes 1-D contiguous views of one parameter (``w``, updated in place), its
gradient ``g`` and the rule's slots (updated in place), plus the scalars of the rule. ``wd`` is
the weight decay: every rule uses ``g' = g + wd * w``. The scalars are rounded to the array's
type before the loop, so float32 arithmetic matches numpy's on float32 arrays. See
``nnkit/updaters.py`` for the formulas; the caller checks that all views have the same length.

Every rule returns True if every value it wrote into ``w`` is finite: the check rides on the
update's own pass (``x - x`` is 0 for a finite ``x`` and NaN for a NaN or an infinity), so a
step that overflowed is found without reading the parameters again. ``all_finite`` is the
same test as a pass of its own, for the gradients, which must all be checked before any
update. The flags are OR-ed integers, so gcc still vectorizes the loops.
"""
from cython cimport floating

from ._math cimport fsqrt as _sqrt


def all_finite(floating[::1] a) -> bool:
    """True if no element of ``a`` is a NaN or an infinity (one read, no temporary)."""
    cdef Py_ssize_t i, n = a.shape[0]
    cdef int bad = 0
    cdef floating zero = 0  # of the array's type: a double 0.0 would widen every x - x
    with nogil:
        for i in range(n):
            bad |= (a[i] - a[i]) != zero
    return not bad


def sgd(floating[::1] w, floating[::1] g, double lr, double wd) -> bool:
    """Plain SGD: ``w -= lr * (g + wd*w)``."""
    cdef Py_ssize_t i, n = w.shape[0]
    cdef int bad = 0
    cdef floating wi, zero = 0  # zero of the array's type: a double 0.0 would widen every x - x
    cdef floating lr_ = <floating>lr, wd_ = <floating>wd
    with nogil:
        for i in range(n):
            wi = w[i] - (lr_ * (g[i] + wd_ * w[i]))
            w[i] = wi
            bad |= (wi - wi) != zero
    return not bad


def sgd_momentum(floating[::1] w, floating[::1] g, floating[::1] v,
                 double lr, double wd, double mu) -> bool:
    """Caffe's momentum: ``v = mu*v + lr*g'; w -= v``."""
    cdef Py_ssize_t i, n = w.shape[0]
    cdef int bad = 0
    cdef floating wi, zero = 0  # zero of the array's type: a double 0.0 would widen every x - x
    cdef floating lr_ = <floating>lr, wd_ = <floating>wd, mu_ = <floating>mu, vi
    with nogil:
        for i in range(n):
            vi = mu_ * v[i] + lr_ * (g[i] + wd_ * w[i])
            v[i] = vi
            wi = w[i] - vi
            w[i] = wi
            bad |= (wi - wi) != zero
    return not bad


def nesterov(floating[::1] w, floating[::1] g, floating[::1] v,
             double lr, double wd, double mu) -> bool:
    """Caffe's Nesterov: ``v_prev = v; v = mu*v + lr*g'; w -= (1+mu)*v - mu*v_prev``."""
    cdef Py_ssize_t i, n = w.shape[0]
    cdef int bad = 0
    cdef floating wi, zero = 0  # zero of the array's type: a double 0.0 would widen every x - x
    cdef floating lr_ = <floating>lr, wd_ = <floating>wd, mu_ = <floating>mu
    cdef floating mu1 = <floating>(1.0 + mu), vprev, vi
    with nogil:
        for i in range(n):
            vprev = v[i]
            vi = mu_ * vprev + lr_ * (g[i] + wd_ * w[i])
            v[i] = vi
            wi = w[i] - (mu1 * vi - mu_ * vprev)
            w[i] = wi
            bad |= (wi - wi) != zero
    return not bad


def adagrad(floating[::1] w, floating[::1] g, floating[::1] h,
            double lr, double wd, double eps) -> bool:
    """AdaGrad: ``h += g'^2; w -= lr * g' / (sqrt(h) + eps)``."""
    cdef Py_ssize_t i, n = w.shape[0]
    cdef int bad = 0
    cdef floating wi, zero = 0  # zero of the array's type: a double 0.0 would widen every x - x
    cdef floating lr_ = <floating>lr, wd_ = <floating>wd, eps_ = <floating>eps, gi, hi
    with nogil:
        for i in range(n):
            gi = g[i] + wd_ * w[i]
            hi = h[i] + gi * gi
            h[i] = hi
            wi = w[i] - (lr_ * gi / (_sqrt(hi) + eps_))
            w[i] = wi
            bad |= (wi - wi) != zero
    return not bad


def rmsprop(floating[::1] w, floating[::1] g, floating[::1] h,
            double lr, double wd, double rho, double eps) -> bool:
    """RMSProp: ``h = rho*h + (1-rho)*g'^2; w -= lr * g' / (sqrt(h) + eps)``."""
    cdef Py_ssize_t i, n = w.shape[0]
    cdef int bad = 0
    cdef floating wi, zero = 0  # zero of the array's type: a double 0.0 would widen every x - x
    cdef floating lr_ = <floating>lr, wd_ = <floating>wd, eps_ = <floating>eps
    cdef floating rho_ = <floating>rho, rho1 = <floating>(1.0 - rho), gi, hi
    with nogil:
        for i in range(n):
            gi = g[i] + wd_ * w[i]
            hi = rho_ * h[i] + rho1 * (gi * gi)
            h[i] = hi
            wi = w[i] - (lr_ * gi / (_sqrt(hi) + eps_))
            w[i] = wi
            bad |= (wi - wi) != zero
    return not bad


def adadelta(floating[::1] w, floating[::1] g, floating[::1] h, floating[::1] u,
             double lr, double wd, double rho, double eps) -> bool:
    """AdaDelta: ``h = rho*h + (1-rho)*g'^2; d = sqrt(u+eps)/sqrt(h+eps)*g';
    u = rho*u + (1-rho)*d^2; w -= lr*d``."""
    cdef Py_ssize_t i, n = w.shape[0]
    cdef int bad = 0
    cdef floating wi, zero = 0  # zero of the array's type: a double 0.0 would widen every x - x
    cdef floating lr_ = <floating>lr, wd_ = <floating>wd, eps_ = <floating>eps
    cdef floating rho_ = <floating>rho, rho1 = <floating>(1.0 - rho), gi, hi, d
    with nogil:
        for i in range(n):
            gi = g[i] + wd_ * w[i]
            hi = rho_ * h[i] + rho1 * (gi * gi)
            h[i] = hi
            d = _sqrt(u[i] + eps_) / _sqrt(hi + eps_) * gi
            u[i] = rho_ * u[i] + rho1 * (d * d)
            wi = w[i] - (lr_ * d)
            w[i] = wi
            bad |= (wi - wi) != zero
    return not bad


def adam(floating[::1] w, floating[::1] g, floating[::1] m, floating[::1] v,
         double lr, double wd, double beta1, double beta2, double eps,
         double correction1, double correction2) -> bool:
    """Adam: ``m = b1*m + (1-b1)*g'; v = b2*v + (1-b2)*g'^2;
    w -= lr * (m/correction1) / (sqrt(v/correction2) + eps)`` with ``correction = 1 - b^t``."""
    cdef Py_ssize_t i, n = w.shape[0]
    cdef int bad = 0
    cdef floating wi, zero = 0  # zero of the array's type: a double 0.0 would widen every x - x
    cdef floating lr_ = <floating>lr, wd_ = <floating>wd, eps_ = <floating>eps
    cdef floating b1 = <floating>beta1, b1c = <floating>(1.0 - beta1)
    cdef floating b2 = <floating>beta2, b2c = <floating>(1.0 - beta2)
    cdef floating c1 = <floating>correction1, c2 = <floating>correction2, gi, mi, vi
    with nogil:
        for i in range(n):
            gi = g[i] + wd_ * w[i]
            mi = b1 * m[i] + b1c * gi
            vi = b2 * v[i] + b2c * (gi * gi)
            m[i] = mi
            v[i] = vi
            wi = w[i] - (lr_ * (mi / c1) / (_sqrt(vi / c2) + eps_))
            w[i] = wi
            bad |= (wi - wi) != zero
    return not bad
