"""SINGA 0.3's Python API on nnkit: scripts written for SINGA run with their imports changed.

A thin namespace over nnkit's own layers, updaters and training loop, mirroring SINGA's modules
(tool/python/singa/ at tag v0.3.0-rc3): :mod:`nnkit.singa.driver`, :mod:`~nnkit.singa.layer`,
:mod:`~nnkit.singa.model`, :mod:`~nnkit.singa.parameter` and
:mod:`~nnkit.singa.initializations`. SINGA's rules live here, where they differ from nnkit's
defaults (pooling rounds down, SINGA's initializers, ``GetParams()`` shapes); nnkit's own
layers keep their defaults. Change ``from singa.model import *`` to
``from nnkit.singa.model import *`` (likewise ``singa.layer``, ``singa.driver``).

``import nnkit`` does not import this package.
"""
