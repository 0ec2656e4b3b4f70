"""Assertions shared by the test modules."""

from __future__ import annotations


def assert_user_error(code: int, stderr: str, *fragments: str) -> str:
    """Exit status 2 and exactly one "deepgrid: error:" line, the last on stderr, no traceback;
    each fragment appears in it. Returns the line."""
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("deepgrid: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]
