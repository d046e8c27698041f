"""Test-wide guards: no test may reach the network, and the engine never downloads.

Every socket connection to a non-loopback address fails the test that tried it.
"""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if self.family == socket.AF_UNIX or host in ("127.0.0.1", "::1", "localhost"):
        return _real_connect(self, address)
    raise AssertionError(f"a test tried to reach the network ({address!r}); tests must run offline")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)


@pytest.fixture(scope="module")
def addon_registered():
    """The Blender add-on registered for a test module (``pytestmark = usefixtures(...)``); needs bpy,
    imported only when a module asks for it."""
    from addon_fixtures import registered_addon

    yield from registered_addon()


@pytest.fixture
def scene(addon_registered):
    """A reset scene with the add-on registered; any run left behind is abandoned afterwards."""
    import bpy
    from addon_fixtures import reset_scene

    from addon import jobs

    reset_scene()
    yield bpy.context.scene
    jobs.abandon()
