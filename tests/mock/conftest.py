"""Fixtures: one real mock upstream (uvicorn on a loopback port) shared by the mock tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from odock.mock.testing import MockServer, mock_server


@pytest.fixture(scope="session")
def mock() -> Iterator[MockServer]:
    """A running mock upstream for the whole session."""
    with mock_server() as server:
        yield server


@pytest.fixture()
def journal(mock: MockServer) -> MockServer:
    """The mock, with its journal cleared before the test."""
    mock.clear()
    return mock
