"""Token authentication by HMAC challenge/response: the shared token never crosses the wire.

Each side sends a fresh 32-byte random challenge (agent in HELLO, controller in AUTH) and proves
it knows the token with HMAC-SHA256 over both challenges, the agent's id and its own role:

    proof(role) = HMAC-SHA256(token, "triobench-auth-v1" 0x00 role 0x00 agent_id 0x00
                                      agent_challenge controller_challenge)

The role (``controller`` / ``agent``) stops a proof being reflected back at its sender; the
agent's fresh challenge stops a recorded AUTH being replayed on a new connection.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

CHALLENGE_SIZE = 32
_DOMAIN = b"triobench-auth-v1"


def new_challenge() -> bytes:
    return secrets.token_bytes(CHALLENGE_SIZE)


def make_proof(
    token: bytes, role: str, agent_id: str, agent_challenge: bytes, controller_challenge: bytes
) -> bytes:
    if role not in ("controller", "agent"):
        raise ValueError(f"unknown role {role!r}")
    message = b"\0".join([_DOMAIN, role.encode(), agent_id.encode()]) + b"\0"
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
