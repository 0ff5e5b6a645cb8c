"""Retain or edit the outputs of chosen modules during a forward pass, and stop it early.

Modelled on baukit's ``nethook.Trace``: callers name the modules they want, read
what was retained (or say how to edit it), and never touch hook handles. Contexts
nest: hooks run in the order they were entered, so an edit entered before a
retention is what that retention sees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch


class StopForward(Exception):
    """Raised by a hook to end a forward pass once every wanted output is retained."""


class _ForwardHooks:
    """A forward hook (made by :meth:`_hook`) on each of ``modules``, registered on entering the context and
    removed on leaving it."""

    def __init__(self, modules: Mapping[object, torch.nn.Module]):
        self.modules = dict(modules)
        self._handles: list = []

    def _hook(self, key) -> Callable:
        raise NotImplementedError

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._hook(k)) for k, m in self.modules.items()]
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return False


class RetainOutputs(_ForwardHooks):
    """Context manager retaining ``select(output)`` of each named module.

    Parameters
    ----------
    modules : mapping of key -> torch.nn.Module
        The modules to hook, under the keys their outputs are retained by.
    select : callable, optional
        Applied to each module's output tensor (element ``element`` when the module
        returns a tuple) before it is retained; e.g. a slice of the last tokens, so
        the full ``[batch, seq, hidden]`` activation is never copied.
    element : int
        Which element of a tuple output is retained: 0, the module's output proper;
        1 for an attention module's weights (when its implementation returns them).
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
        element: int = 0,
    ):
        super().__init__(modules)
        self.select = select
        self.stop = stop
        self.element = element
        self.retained: dict[object, torch.Tensor] = {}

    def _hook(self, key):
        def hook(module, args, output):
            tensor = output[self.element] if isinstance(output, tuple) else output
            self.retained[key] = self.select(tensor).detach()
            if self.stop and len(self.retained) == len(self.modules):
                raise StopForward

        return hook

    def __enter__(self) -> RetainOutputs:
        self.retained.clear()
        return super().__enter__()

    def __exit__(self, exc_type, exc, tb) -> bool:
        super().__exit__(exc_type, exc, tb)
        return exc_type is StopForward


class EditLastToken(_ForwardHooks):
    """Context manager replacing the last token's output of each named module by ``edit(key, output)``.

    Parameters
    ----------
    modules : mapping of key -> torch.nn.Module
        The modules to edit, under the keys ``edit`` is called with.
    edit : callable ``(key, tensor) -> tensor``
        Given a module's output at the last sequence position, ``[batch, hidden]``, returns what
        replaces it (same shape). Earlier positions are left alone: under causal attention they
        cannot see the last token, so an edit there changes nothing before it.

    The module's output (its first element when it returns a tuple) is copied before it is
    edited, so no tensor the module returned is changed in place.
    """

    def __init__(self, modules: Mapping[object, torch.nn.Module],
                 edit: Callable[[object, torch.Tensor], torch.Tensor]):
        super().__init__(modules)
        self.edit = edit

    def _hook(self, key):
        def hook(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            edited = tensor.clone()
            edited[:, -1] = self.edit(key, tensor[:, -1])
            return (edited, *output[1:]) if isinstance(output, tuple) else edited

        return hook
