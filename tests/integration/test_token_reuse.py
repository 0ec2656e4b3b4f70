"""One process, two runs with different Ray tokens (a changed HOME, say): the second one starts.

Ray caches the token it read in the process; before deepgrid made it read again on every start, the
second local engine's driver presented the first run's token to the new head, and ray.init failed
with "Failed to start GCS" (the test after tests/integration/test_s3_shards.py, in CI).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deepgrid.distributed import engine
from deepgrid.distributed.token import TOKEN_ENV, TOKEN_PATH_ENV, token_file


def test_a_second_engine_with_another_token_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_PATH_ENV, raising=False)
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    # The second HOME already has a token of its own (a machine used before): nothing new is made.
    existing = tmp_path / "second" / ".ray" / "auth_token"
    existing.parent.mkdir(parents=True)
    existing.write_text(generate_new_authentication_token())
    existing.chmod(0o600)
    tokens = []
    try:
        for run in ("first", "second"):
            monkeypatch.setenv("HOME", str(tmp_path / run))
            engine.start_local(num_cpus=1)
            assert ray.get(ray.remote(lambda: 42).remote()) == 42
            tokens.append(token_file().read_text())
            engine.shutdown()
    finally:
        engine.shutdown()
    assert tokens[0] != tokens[1]
