"""Token authentication by HMAC challenge/response: the shared token never crosses the wire.

Each side sends a fresh 32-byte random challenge (agent in HELLO, controller in AUTH) and proves
it knows the token with HMAC-SHA256 over both challenges, the agent's id and its own role:

    proof(role) = HMAC-SHA256(token, "triobench-auth-v1" 0x00 role 0x00 agent_id 0x00
                                      agent_challenge controller_challenge)

The role (``controller`` / ``agent``) stops a proof being reflected back at its sender; the
agent's fresh challenge stops a recorded AUTH being replayed on a new connection.

After the handshake every frame is authenticated too (protocol.md §3), so a party on the path
cannot relay the handshake and then inject, alter, replay, reorder or drop frames. Each
direction has its own key, derived from the token and the connection's two challenges:

    key(sender) = HMAC-SHA256(token, "triobench-frames-v1" 0x00 sender 0x00 agent_id 0x00
                                     agent_challenge controller_challenge)
    tag         = HMAC-SHA256(key(sender), counter as 8 bytes big-endian || body)[:16]

``counter`` numbers the sender's authenticated frames from 0.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

CHALLENGE_SIZE = 32
TAG_SIZE = 16
_DOMAIN = b"triobench-auth-v1"
_FRAMES_DOMAIN = b"triobench-frames-v1"


def new_challenge() -> bytes:
    return secrets.token_bytes(CHALLENGE_SIZE)


def make_proof(
    token: bytes, role: str, agent_id: str, agent_challenge: bytes, controller_challenge: bytes
) -> bytes:
    return _keyed(token, _DOMAIN, role, agent_id, agent_challenge, controller_challenge)


def _keyed(
    token: bytes,
    domain: bytes,
    role: str,
    agent_id: str,
    agent_challenge: bytes,
    controller_challenge: bytes,
) -> bytes:
    """HMAC-SHA256(token, domain 0 role 0 agent_id 0 agent_challenge controller_challenge)."""
    if role not in ("controller", "agent"):
        raise ValueError(f"unknown role {role!r}")
    message = b"\0".join([domain, role.encode(), agent_id.encode()]) + b"\0"
    message += agent_challenge + controller_challenge
    return hmac.new(token, message, hashlib.sha256).digest()


def check_proof(
    token: bytes,
    role: str,
    agent_id: str,
    agent_challenge: bytes,
    controller_challenge: bytes,
    proof: bytes,
) -> bool:
    expected = make_proof(token, role, agent_id, agent_challenge, controller_challenge)
    return hmac.compare_digest(expected, proof)


def frame_key(
    token: bytes, sender: str, agent_id: str, agent_challenge: bytes, controller_challenge: bytes
) -> bytes:
    """The key that authenticates the frames ``sender`` (``controller``/``agent``) sends."""
    return _keyed(token, _FRAMES_DOMAIN, sender, agent_id, agent_challenge, controller_challenge)


def frame_tag(key: bytes, counter: int, body: bytes | memoryview) -> bytes:
    """The 16-byte tag of the sender's ``counter``-th authenticated frame."""
    return FrameMac(key).tag(counter, body)


class FrameMac:
    """``frame_tag`` for one key, with the key's HMAC state prepared once (per frame only the
    counter and body are hashed)."""

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, digestmod=hashlib.sha256)

    def tag(self, counter: int, body: bytes | memoryview) -> bytes:
        mac = self._base.copy()
        mac.update(counter.to_bytes(8, "big"))
        mac.update(body)
        return mac.digest()[:TAG_SIZE]
