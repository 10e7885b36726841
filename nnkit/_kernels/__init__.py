"""Cython kernels: pure compute on typed memoryviews, float32 and float64, GIL released."""
