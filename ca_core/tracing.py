"""Tracing (issue 15): OpenTelemetry spans when switched on, nothing at all when not.

The one adapter module between this code and OpenTelemetry. Off is the default: then
``span()`` returns one shared do-nothing context manager and functions wrapped by
``traced()`` are awaited directly, so no ``opentelemetry`` module is imported and no span
object is made (gateway/observability.py switches it on for ``VCC_PKI_OTLP_ENDPOINT``;
tests switch it on with an in-memory exporter).

Spans follow the request: the gateway's server span (gateway/app.py), ``ca.*`` spans for
issuance, revocation, OCSP answers and time-stamps (ca_core), ``store.*`` spans for a
write batch or a read (db/sql.py, inside another span only: not the background jobs'
polls) and one ``sign`` span per CA signature
(ca_core/signing.py). Context travels in contextvars, which asyncio tasks and
``asyncio.to_thread`` copy: a token signature made in a thread is still the child of its
request's span. A store write batch (group commit) is the child of the request whose write
started the flusher; the other writes of the batch are counted in ``db.batch_size``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class _NoSpan:
    """The shared context manager of the off path: enters to None."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()
# opentelemetry.trace.Tracer when tracing is on; None (the fast path) when off. Typed Any:
# ca_core does not import opentelemetry unless tracing is switched on.
_tracer: Any = None


def enabled() -> bool:
    return _tracer is not None


def current_tracer() -> Any:
    """The opentelemetry Tracer in use, or None when tracing is off."""
    return _tracer


def use_tracer(tracer: Any) -> None:
    """Switch tracing on with ``tracer`` (an opentelemetry Tracer), or off with None."""
    global _tracer
    _tracer = tracer


def span(name: str) -> Any:
    """A context manager: a new current span named ``name`` when tracing is on (entering
    gives the span, for attributes), the shared no-op when it is off (entering gives None).
    """
    tracer = _tracer
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(name)


def set_attributes(current: Any, attributes: Mapping[str, str | int | bool]) -> None:
    """Set attributes on ``current`` (what ``span()`` entered to) when it is a span."""
    if current is not None:
        current.set_attributes(attributes)


def traced(name: str, attributes: Callable[..., Mapping[str, Any]] | None = None,
           root: bool = True) -> Callable[[Callable[P, Coroutine[Any, Any, T]]],
                                          Callable[P, Coroutine[Any, Any, T]]]:
    """Decorate an async function: each call is a span named ``name`` when tracing is on
    (with ``attributes(*args, **kwargs)`` as its attributes when given: called only then),
    a plain await (one check of a global) when it is off. ``root=False``: a span only
    inside another one (store calls: the background jobs' polls every few hundred
    milliseconds would otherwise each be a trace of their own)."""
    def wrap(call: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(call)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            tracer = _tracer
            if tracer is None or (not root and not _in_span()):
                return await call(*args, **kwargs)
            with tracer.start_as_current_span(
                    name, attributes=attributes(*args, **kwargs) if attributes else None):
                return await call(*args, **kwargs)
        return run
    return wrap


def _in_span() -> bool:
    from opentelemetry import trace  # imported already: tracing is on

    return bool(trace.get_current_span().get_span_context().is_valid)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, for log lines; None when tracing is
    off or there is no valid current span."""
    if _tracer is None:
        return None
    from opentelemetry import trace  # imported already: tracing is on

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
