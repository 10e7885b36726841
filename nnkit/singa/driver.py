"""SINGA 0.3's ``singa.driver`` (a SWIG module there): the ``Driver`` scripts create first.

``Driver().Init(sys.argv)`` is accepted and keeps the arguments; SINGA reads its cluster and
job configuration from them (tool/python/singa/driver.i), nnkit needs none. ``Train`` and
``Test`` run SINGA job protos, which nnkit does not read: they raise, naming what to use.
"""
from __future__ import annotations

from typing import Any, Sequence


class Driver:
    """Accepts ``Init(argv)`` and ``InitLog(name)``; nnkit trains in the script's process."""

    def __init__(self) -> None:
        self.argv: list[str] = []
        self.log_name: str | None = None

    def Init(self, argv: Sequence[str] | None = None) -> None:
        """Keeps ``argv``: nothing in it configures nnkit."""
        self.argv = list(argv or [])

    def InitLog(self, name: Any) -> None:
        """Keeps the log's name: nnkit prints its log lines."""
        self.log_name = str(name)

    def Train(self, resume: bool, job_conf: Any) -> None:
        """SINGA runs a serialized JobProto here; nnkit cannot."""
        raise NotImplementedError("Driver.Train runs a SINGA job proto, which nnkit does not read: "
                                  "train with nnkit.singa.model's fit/evaluate or the per-layer API")

    def Test(self, job_conf: Any) -> None:
        """SINGA tests a serialized JobProto here; nnkit cannot."""
        raise NotImplementedError("Driver.Test runs a SINGA job proto, which nnkit does not read: "
                                  "test with nnkit.singa.model's evaluate")
