"""The chain rule from the factors' gradients back to the inputs, written out (first order,
no graph, fused multiply-adds in place): what the streaming and Triton backward passes end with.
Each gradient is added into its buffer by the pass that makes it; inactive positions get zeros."""

from __future__ import annotations

from typing import NamedTuple

import torch

from mi_losses.kernels.factors import Components, Frame, Queries, Sides


class Grads(NamedTuple):
    """Gradients of a loss with respect to the factors ``y, wc, k`` of :class:`Sides`; for
    ``q`` (``None`` without an own term) minus the gradient, the product ``G b``; for ``y2``
    and ``w`` (which enter the scores as ``-y2 w^T / 2``) ``-2`` times the gradients, the
    products ``G w`` and ``G^T y2``."""

    y: torch.Tensor
    y2: torch.Tensor
    q: torch.Tensor | None
    w: torch.Tensor
    wc: torch.Tensor
    k: torch.Tensor


class Targets(NamedTuple):
    """Where one direction's gradients are added, ``(rows, S, E)`` rows of the inputs' gradient
    buffers (``None`` where not wanted). Clean embeddings and means share one buffer
    (``d mu = d x``); ``own_*`` are the queries' rows of it and of the stds' (own terms)."""

    queries: torch.Tensor | None
    own_centres: torch.Tensor | None
    own_stds: torch.Tensor | None
    centres: torch.Tensor | None
    stds: torch.Tensor | None
    rows: torch.Tensor | None = None  # the components' rows of centres and stds, if gathered

    def positions(self, start: int, stop: int) -> Targets:
        """The buffers' positions ``[start, stop)``."""
        buffers = self[:5]
        if all(start == 0 and stop == t.shape[1] for t in buffers if t is not None):
            return self
        return Targets(*(None if t is None else t[:, start:stop] for t in buffers))

    def components(self, start: int, stop: int, index: torch.Tensor | None = None) -> Targets:
        """The buffers of components ``[start, stop)``, or with an ``index`` of components
        ``index[start:stop]`` (the query buffers left out)."""
        if index is not None:
            return Targets(None, None, None, self.centres, self.stds, index[start:stop])
        centres, stds = (None if t is None else t[start:stop] for t in (self.centres, self.stds))
        return Targets(None, None, None, centres, stds)


def add_query_grads(
    s: Queries, f: Frame, d_y: torch.Tensor, d_y2: torch.Tensor, d_q: torch.Tensor | None,
    out: Targets, *, summed: bool = False,
) -> None:  # fmt: skip
    """Add the gradients of the query inputs from the query factors' (:class:`Grads` ``y``,
    ``y2``, ``q``; ``d_y`` is overwritten): ``d y = a (d_y' - y' d_y2) / t``. ``summed``:
    ``d_y`` is ``out.queries`` itself (it held zeros, ``d_y'`` was summed there)."""
    with torch.no_grad():
        if out.queries is not None:
            grad = d_y.addcmul_(s.y, d_y2, value=-1.0).view(out.queries.shape).mul_(f.inverse)
            if summed:
                grad.mul_(s.a.unsqueeze(-1))
            else:
                out.queries.addcmul_(grad, s.a.unsqueeze(-1))
        if s.own is not None:
            assert d_q is not None
            add_own_grads(*s.own, s.a, d_q, out)


def add_own_grads(
    residual: torch.Tensor, sigma_i: torch.Tensor, a: torch.Tensor, d_q: torch.Tensor,
    out: Targets,
) -> None:  # fmt: skip
    """Add the gradients of the own term ``q = -a (|r|^2 / 2 + sum log sigma_i + ...)``,
    ``r = (y - x - mu) / sigma_i``, from minus its gradient, ``d_q`` ``(m, S)``: ``d y = -d x``
    ``= a d_q r / sigma_i``, ``d sigma_i = a d_q (1 - r^2) / sigma_i``."""
    with torch.no_grad():
        scaled = (d_q * a).unsqueeze(-1) / sigma_i  # a d_q / sigma_i
        d_residual = scaled.mul(residual)  # d r / sigma_i
        if out.queries is not None:
            out.queries.add_(d_residual)
        if out.own_centres is not None:
            out.own_centres.sub_(d_residual)
        if out.own_stds is not None:
            out.own_stds.add_(scaled.addcmul_(d_residual, residual, value=-1.0))


def add_component_grads(
    s: Components, f: Frame, d_w: torch.Tensor, d_wc: torch.Tensor, d_k: torch.Tensor,
    out: Targets,
) -> None:  # fmt: skip
    """Add the gradients of the component inputs from the component factors' (:class:`Grads`
    ``w``, ``wc``, ``k``; ``d_w`` and ``d_wc`` are overwritten). With ``U = d_w``, ``V = d_wc``,
    ``g = d_k`` (``G^T y'^2``, ``G^T y'``, ``G^T a``): ``d x = w (V - g c') / t`` and
    ``d sigma = (w (U - 2 c' V + g c'^2) - b g) / sigma``, ``sigma = t ratio``."""
    with torch.no_grad():
        assert s.ratio is not None
        shape = s.ratio.shape
        c, w, v = s.c, s.w.view(shape), d_wc.view(shape)
        g = d_k.unsqueeze(-1)
        if out.stds is not None:
            u = d_w.view(shape).addcmul_(c, torch.addcmul(v, g, c, value=-0.5), value=-2.0)
            u.mul_(w).sub_((d_k * s.b).unsqueeze(-1)).mul_(f.inverse)
            if out.rows is None:
                out.stds.addcdiv_(u, s.ratio)
            else:
                out.stds.index_add_(0, out.rows, u.div_(s.ratio))
        if out.centres is not None:
            v = v.addcmul_(g, c, value=-1.0).mul_(f.inverse)
            if out.rows is None:
                out.centres.addcmul_(v, w)
            else:
                out.centres.index_add_(0, out.rows, v.mul_(w))


def add_grads(s: Sides, d: Grads, out: Targets) -> None:
    """:func:`add_query_grads` and :func:`add_component_grads` of one direction."""
    add_query_grads(s.queries, s.frame, d.y, d.y2, d.q, out)
    add_component_grads(s.components, s.frame, d.w, d.wc, d.k, out)
