"""The CLI's input checks, through `main()`: bad --data and flags that disagree with --token are
one `error:` line and exit status 2, before anything is sent; app data keeps its integers."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import struct_pb2

from services import auth
from services.app_data import DataError, data_from_json, data_to_json
from services.cli import main
from services.config import AuthSettings


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    return lines[0]


# Port 1: nothing listens, so a command that got past its checks would fail with UNAVAILABLE.
SEND = ["send", "--address", "127.0.0.1:1", "--user", "alice"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("[1,2]", "error: --data: data must be a JSON object, e.g. '{\"order\": 7}'; got an array"),
        ('"text"', "got a string"),
        ("{nope", "error: --data: data is not valid JSON: Expecting property name"),
        ('{"x": NaN}', "NaN is not a JSON number"),
        ('{"id": 9007199254740993}', "data.id is 9007199254740993, beyond what a JSON number"),
        ('{"a": [1, {"b": -9007199254740993}]}', "data.a[1].b is -9007199254740993"),
    ],
)
def test_bad_data_is_one_clear_line(
    data: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert expected in _fails([*SEND, "--data", data], capsys)


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    for name in ("HERALD_TENANT", "HERALD_TOKEN", "HERALD_SERVICE"):
        monkeypatch.delenv(name, raising=False)
    settings = AuthSettings()
    minter = auth.TokenMinter(auth.load_keys(settings, tmp_path / "herald"), settings)
    return minter.mint("alice", "acme", [auth.SCOPE_SUBSCRIBE])


TAIL = ["tail", "--address", "127.0.0.1:1"]


def test_a_user_that_disagrees_with_the_token_is_an_error(
    token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _fails([*TAIL, "--token", token, "--user", "bob"], capsys)
    assert line.startswith("error: --user bob disagrees with --token, which is for 'alice'")


def test_a_tenant_that_disagrees_with_the_token_is_an_error(
    token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (TAIL, ["inbox", "--address", "127.0.0.1:1"], ["sessions", "list"]):
        line = _fails([*command, "--token", token, "--tenant", "globex"], capsys)
        assert "--tenant globex disagrees with --token, which is for tenant 'acme'" in line


def test_flags_that_agree_with_the_token_are_honoured(
    token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Past the checks: the call itself fails (nothing listens on port 1).
    inbox = ["inbox", "--address", "127.0.0.1:1"]
    line = _fails([*inbox, "--token", token, "--user", "alice", "--tenant", "acme"], capsys)
    assert line.startswith("error: UNAVAILABLE: ")


def test_a_token_that_is_not_a_jwt_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    line = _fails([*TAIL, "--token", "not-a-jwt"], capsys)
    assert line == "error: --token is not a JWT (header.payload.signature)"


def test_tail_without_a_user_or_token_says_what_is_missing(
    token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _fails(TAIL, capsys) == "error: --user is required (or a --token of the one to act as)"


def test_app_data_keeps_integers_and_fractions() -> None:
    data = data_from_json('{"n": 7, "big": 9007199254740992, "f": 0.5, "l": [1, -2, 3.25]}')
    # On the wire every number is a double (google.protobuf.Struct) ...
    assert data.fields["n"].number_value == 7.0
    wire = struct_pb2.Struct.FromString(data.SerializeToString())
    # ... and it comes back as sent.
    got = data_to_json(wire)
    assert got == {"n": 7, "big": 9007199254740992, "f": 0.5, "l": [1, -2, 3.25]}
    assert [type(v) for v in (got["n"], got["big"], got["f"])] == [int, int, float]
    with pytest.raises(DataError):
        data_from_json("[]")
