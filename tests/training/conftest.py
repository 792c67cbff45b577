import pytest


@pytest.fixture
def one_process(monkeypatch):
    """In-process training as a one-rank job: no torchrun variables from the environment."""
    monkeypatch.setenv("WORLD_SIZE", "1")
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
