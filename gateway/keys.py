"""Typed application state keys (aiohttp AppKey), shared by the gateway modules."""

from __future__ import annotations

from aiohttp import web

from gateway.runtime import Services

SERVICES = web.AppKey("services", Services)
