"""Principals of tokens with the same `scope` claim share one scope set (a node holds one
principal per open stream, docs/performance.md sixth session); their scopes stay exact."""

from __future__ import annotations

from pathlib import Path

from services import auth
from services.config import AuthSettings


def test_principals_of_one_scope_claim_share_their_scope_set(tmp_path: Path) -> None:
    settings = AuthSettings()
    keys = auth.load_keys(settings, tmp_path / "herald")
    minter = auth.TokenMinter(keys, settings)
    verifier = auth.TokenVerifier(keys, settings)
    subscribe = [auth.SCOPE_SUBSCRIBE]
    alice = verifier.verify(minter.mint("alice", "acme", subscribe))
    bob = verifier.verify(minter.mint("bob", "acme", subscribe))
    sender = verifier.verify(minter.mint("svc", "acme", [auth.SCOPE_SEND, auth.SCOPE_SUBSCRIBE]))
    assert alice.scopes == frozenset(subscribe)
    assert bob.scopes is alice.scopes
    assert sender.scopes == {auth.SCOPE_SEND, auth.SCOPE_SUBSCRIBE}
    assert sender.scopes is not alice.scopes
    assert (alice.subject, bob.subject) == ("alice", "bob")
