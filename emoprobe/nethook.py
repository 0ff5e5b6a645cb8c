"""Retain the outputs of chosen modules during a forward pass, and stop it early.

Modelled on baukit's ``nethook.Trace``: callers name the modules they want, read
what was retained after the ``with`` block, and never touch hook handles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch


class StopForward(Exception):
    """Raised by a hook to end a forward pass once every wanted output is retained."""


class RetainOutputs:
    """Context manager retaining ``select(output)`` of each named module.

    Parameters
    ----------
    modules : mapping of key -> torch.nn.Module
        The modules to hook, under the keys their outputs are retained by.
    select : callable, optional
        Applied to each module's output tensor (the first element when the module
        returns a tuple) before it is retained; e.g. a slice of the last tokens, so
        the full ``[batch, seq, hidden]`` activation is never copied.
    stop : bool
        When true, the forward pass is ended (by raising :class:`StopForward`, which
        the context swallows) right after the last of ``modules`` in call order has
        run, so later layers and the LM head are never computed.

    Attributes
    ----------
    retained : dict of key -> torch.Tensor
        Filled during the forward pass; detached tensors.
    """

    def __init__(
        self,
        modules: Mapping[object, torch.nn.Module],
        select: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
        stop: bool = False,
    ):
        self.modules = dict(modules)
        self.select = select
        self.stop = stop
        self.retained: dict[object, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, key):
        def hook(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            self.retained[key] = self.select(tensor).detach()
            if self.stop and len(self.retained) == len(self.modules):
                raise StopForward

        return hook

    def __enter__(self) -> RetainOutputs:
        self.retained.clear()
        self._handles = [m.register_forward_hook(self._hook(k)) for k, m in self.modules.items()]
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return exc_type is StopForward
