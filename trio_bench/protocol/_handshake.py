"""The handshake of §3, both halves side by side: HELLO -> AUTH -> WELCOME, sans-IO.

``AgentHandshake`` and ``ControllerHandshake`` take the peer's messages in and hand back the
messages to send and the keys that authenticate the frames after the handshake; the I/O layer
only moves them. Everything a side must refuse ends in ``Refusal``: its ``code`` is an ERROR
code of §2, its ``text`` the one line to log and (where ``tell`` is set) to send in
``ERROR{seq: 0}`` before closing.
"""

from __future__ import annotations

import attrs

from ._auth import CHALLENGE_SIZE, check_proof, frame_key, make_proof, new_challenge
from ._errors import ProtocolError
from ._messages import PROTOCOL_VERSION, Auth, Error, Hello, Message, SessionInfo, Welcome


class Refusal(Exception):
    """The handshake cannot go on. ``tell``: send the peer ``ERROR{seq: 0, code}`` first."""

    def __init__(self, text: str, code: str, *, tell: bool = True) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.tell = tell

    def error(self) -> Error:
        return Error(seq=0, code=self.code, message=self.text[:1000], summaries=())


@attrs.define
class AgentHandshake:
    """The agent's half, for one connection: ``hello()`` first, then ``receive_auth``."""

    agent_id: str
    token: bytes | None
    software: str
    hostname: str
    cpus: int
    session: SessionInfo | None = None
    challenge: bytes = attrs.field(factory=new_challenge)
    controller_challenge: bytes | None = None
    done: bool = False

    def hello(self) -> Hello:
        return Hello(
            protocol=PROTOCOL_VERSION,
            software=self.software,
            agent_id=self.agent_id,
            hostname=self.hostname,
            cpus=self.cpus,
            challenge=self.challenge,
            auth_required=self.token is not None,
            session=self.session,
        )

    def key_after(self, message: Message) -> bytes | None:
        """The key of the controller's frames that follow ``message`` (its AUTH), if any."""
        if self.token is None or not isinstance(message, Auth):
            return None
        if len(message.challenge) != CHALLENGE_SIZE:
            return None
        return frame_key(self.token, "controller", self.agent_id, self.challenge, message.challenge)

    def receive_auth(self, message: Message) -> Welcome:
        """Check AUTH; the WELCOME to send. Raises ``Refusal`` (version, token) or
        ``ProtocolError`` (anything but AUTH: only the handshake before authentication)."""
        if not isinstance(message, Auth):
            raise ProtocolError(f"expected auth, got {message.TAG}")
        if message.protocol != PROTOCOL_VERSION:
            raise Refusal(
                f"version mismatch: agent {self.agent_id} speaks protocol {PROTOCOL_VERSION} "
                f"(triobench {self.software}), controller speaks {message.protocol} "
                f"(triobench {message.software})",
                "version_mismatch",
            )
        proof = b""
        if self.token is not None:
            good = len(message.challenge) == CHALLENGE_SIZE and check_proof(
                self.token, "controller", self.agent_id, self.challenge, message.challenge,
                message.proof,
            )  # fmt: skip
            if not good:
                raise Refusal("authentication failed: wrong or missing token", "auth_failed")
            proof = make_proof(
                self.token, "agent", self.agent_id, self.challenge, message.challenge
            )
        self.controller_challenge = message.challenge
        self.done = True
        return Welcome(proof=proof)

    def send_key(self) -> bytes | None:
        """The key of the agent's frames after its WELCOME (None without a token)."""
        if self.token is None or self.controller_challenge is None:
            return None
        return frame_key(
            self.token, "agent", self.agent_id, self.challenge, self.controller_challenge
        )


@attrs.define
class ControllerHandshake:
    """The controller's half, for one connection: ``receive_hello`` gives the AUTH to send,
    ``receive_welcome`` completes it. ``configured_id``: the id the config gives the agent
    (None: take the agent's own)."""

    token: bytes | None
    software: str
    controller: str
    address: str
    configured_id: str | None = None
    challenge: bytes = attrs.field(factory=new_challenge)
    hello: Hello | None = None
    done: bool = False

    def receive_hello(self, message: Message) -> Auth:
        if isinstance(message, Error):
            raise Refusal(f"{self.address}: {message.message}", message.code, tell=False)
        if not isinstance(message, Hello):
            raise Refusal(f"{self.address}: expected hello, got {message.TAG}", "", tell=False)
        if self.configured_id is not None and message.agent_id != self.configured_id:
            # The id names the agent's storage prefix and results folder: silently using
            # another name than the agent's own would put its data somewhere unexpected.
            raise Refusal(
                f"the agent at {self.address} is {message.agent_id!r} (its --id), the config "
                f"says {self.configured_id!r}: make them agree, or leave the id out of the "
                "config",
                "bad_config",
                tell=False,
            )
        if message.protocol != PROTOCOL_VERSION:
            raise Refusal(
                f"version mismatch: controller speaks protocol {PROTOCOL_VERSION} "
                f"(triobench {self.software}), agent {message.agent_id} at {self.address} "
                f"speaks {message.protocol} (triobench {message.software})",
                "version_mismatch",
            )
        if self.token is not None and not message.auth_required:
            # A peer that says it needs no token could be anything (an impostor answering on
            # the agent's address): it gets no proof, and is refused.
            raise Refusal(
                f"agent {message.agent_id} at {self.address} does not require a token, but "
                "this controller has one: refusing it (start the agent with --token-file, or "
                "run the controller without a token)",
                "auth_failed",
                tell=False,
            )
        if message.auth_required and self.token is None:
            raise Refusal(
                f"agent {message.agent_id} at {self.address} requires a token "
                "(--token-file or TRIOBENCH_TOKEN)",
                "auth_failed",
                tell=False,
            )
        self.hello = message
        proof = b""
        if self.token is not None:
            proof = make_proof(
                self.token, "controller", message.agent_id, message.challenge, self.challenge
            )
        return Auth(
            protocol=PROTOCOL_VERSION,
            software=self.software,
            controller=self.controller,
            challenge=self.challenge,
            proof=proof,
        )

    def _key(self, sender: str) -> bytes | None:
        if self.token is None or self.hello is None:
            return None
        return frame_key(
            self.token, sender, self.hello.agent_id, self.hello.challenge, self.challenge
        )

    def key_after(self, message: Message) -> bytes | None:
        """The key of the agent's frames that follow ``message`` (its WELCOME), if any."""
        return self._key("agent") if isinstance(message, Welcome) else None

    def receive_welcome(self, message: Message) -> None:
        if isinstance(message, Error):
            raise Refusal(f"agent at {self.address}: {message.message}", message.code, tell=False)
        if not isinstance(message, Welcome):
            raise Refusal(f"{self.address}: expected welcome, got {message.TAG}", "", tell=False)
        assert self.hello is not None, "receive_hello first"
        if self.token is not None and not check_proof(
            self.token, "agent", self.hello.agent_id, self.hello.challenge, self.challenge,
            message.proof,
        ):  # fmt: skip
            raise Refusal(
                f"agent at {self.address} could not prove it knows the token",
                "auth_failed",
                tell=False,
            )
        self.done = True

    def send_key(self) -> bytes | None:
        """The key of the controller's frames after its AUTH (None without a token)."""
        return self._key("controller")
