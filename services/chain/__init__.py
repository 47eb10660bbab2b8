"""The transformer chain: format conversion, Ed25519 signing and compression of deliveries.

`Chain` (server side, shared by every transport), `ChainInterceptor` (StreamService over
gRPC), `Opener` (client side: decodes and verifies). docs/transformers.md is the protocol.
"""

from services.chain.chain import Chain, default_policy
from services.chain.interceptor import ChainInterceptor
from services.chain.opening import Opener, Rejected
from services.chain.policy import PLAIN, ChainPolicy, PolicyProvider, Variant, negotiate
from services.chain.signing import KeyRing, load_dir, signed_message

__all__ = [
    "PLAIN",
    "Chain",
    "ChainInterceptor",
    "ChainPolicy",
    "KeyRing",
    "Opener",
    "PolicyProvider",
    "Rejected",
    "Variant",
    "default_policy",
    "load_dir",
    "negotiate",
    "signed_message",
]
