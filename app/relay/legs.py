"""The two ends of a directly relayed session, as asyncio protocols: no streams, queues or tasks per frame.

A frame is parsed where its bytes arrive (`data_received`) and written to the other leg's transport in the
same callback. The upstream-to-client direction forwards each frame's bytes as received (server frames are
unmasked); the client-to-upstream direction unmasks the client's frame and masks it again under a fresh key.
Text frames are checked to be UTF-8 either way. Backpressure is the transports' own: when one leg's write
buffer passes its high-water mark (`pause_writing`), the other leg stops reading its socket until it drains, so
at most one socket read and one write buffer per direction are ever held, and no frame is dropped.

Control frames stay on their leg: pings are answered where they arrive, each leg sends its own keepalive pings,
and a close frame is handed to the session (`DirectSession`), which decides what each side is told.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from app.relay.tap import Direction
from app.relay.wire import (
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    ProtocolError,
    apply_mask,
    close_payload,
    frame,
    mask_key,
    masked_frame,
    parse_close,
)

if TYPE_CHECKING:
    from app.relay.direct_session import DirectSession

CLOSE_TIMEOUT_S = 5.0  # how long a closing handshake may take before the connection is just dropped
_TEXT, _BINARY = 0x1, 0x2
_SAMPLE_MASK = 63  # the relay's own latency is observed on one message in 64


def _check_utf8(payload: bytes) -> None:
    """A recorded text message that is not ASCII: invalid UTF-8 fails the connection with 1007. (ASCII, the
    usual JSON event, is checked by `bytes.isascii()` inline, much cheaper than decoding it.)"""
    try:
        payload.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(1007, "invalid UTF-8 in text message") from exc


class Leg(asyncio.Protocol):
    """One WebSocket connection of a relayed session. `MASKED_INPUT`: frames from the peer carry a mask
    (the client leg, where we are the server); our own frames are masked on the other leg."""

    MASKED_INPUT: bool = False
    DIRECTION: Direction = Direction.CLIENT_TO_SERVICE

    def __init__(self, max_message: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.session: DirectSession | None = None
        self.peer: Leg | None = None
        self.max_message = max_message
        self.state: Literal["open", "closing", "closed"] = "open"
        self.received_close: tuple[int, str] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._fragments: bytearray | None = None
        self._fragment_opcode = 0
        self._close_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        self.frames = 0  # messages relayed from this leg's peer, and their payload bytes
        self.bytes = 0
        self.on_lost: Callable[[], None] | None = None  # told once when the connection ends
        self._write_paused = False
        self._pong_owed: bytes | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # a stream transport: TCP or TLS

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - protocol signature
        was = self.state
        self.state = "closed"
        self._cancel_timers()
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost()
        if self.peer is not None and self.peer.transport is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()  # never leave the other side paused on our account
        if not self.closed.done():
            self.closed.set_result(None)
        if self.session is not None and self.received_close is None and was != "closed":
            self.session.leg_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._pong_owed is not None and self.state == "open":
            payload, self._pong_owed = self._pong_owed, None
            self.write_frame(PONG, payload)
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        view: bytes | bytearray
        if buffer:
            buffer += data
            view = buffer
        else:
            view = data
        try:
            used = self._parse(view)
        except ProtocolError as exc:
            self._buffer = bytearray()
            first = self.state == "open"
            self.fail(exc.code, exc.reason)
            if first:
                # What follows in the stream cannot be parsed (the rest of an oversized message, a bad frame), so
                # the peer's close reply would never be read: end as after a closing handshake, the server side
                # closing TCP at once (the close frame is flushed first), a client giving the server a moment.
                self._finish_close()
            return
        if view is buffer:
            del buffer[:used]
        elif used < len(view):
            self._buffer = bytearray(view[used:])

    # --- frames ----------------------------------------------------------------------------------------

    def _parse(self, view: bytes | bytearray) -> int:
        """Handle every complete frame in `view`; returns how many bytes were used."""
        pos = 0
        size = len(view)
        masked_input = self.MASKED_INPUT
        t0 = time.perf_counter()
        while size - pos >= 2 and self.state != "closed":
            first = view[pos]
            second = view[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(view[pos + 2:pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(view[pos + 2:pos + 10], "big")
                head = 10
            if bool(second & 0x80) != masked_input:
                raise ProtocolError(1002, "incorrect masking")
            if first & 0x70:
                raise ProtocolError(1002, "reserved bits set")
            if length > self.max_message:
                raise ProtocolError(1009, "message too big")
            if first & 0x08 and (length > 125 or not first & 0x80):  # a control frame, checked before buffering it
                raise ProtocolError(1002, "fragmented or oversized control frame")
            start = pos + head + (4 if masked_input else 0)
            end = start + length
            if end > size:
                break
            opcode = first & 0x0F
            if (opcode in (_TEXT, _BINARY)) and first & 0x80 and self._fragments is None:
                if self.state == "open":
                    self._message(view, pos, start, end, opcode, t0)
            elif opcode >= 0x8:
                self._control(first, opcode, self._payload(view, start, end))
            elif opcode in (CONTINUATION, _TEXT, _BINARY):
                self._fragment(first, opcode, self._payload(view, start, end), t0)
            else:
                raise ProtocolError(1002, "unknown opcode")
            pos = end
        return pos

    def _payload(self, view: bytes | bytearray, start: int, end: int) -> bytes:
        """A frame's payload as sent (unmasked)."""
        if self.MASKED_INPUT:
            # A sliced copy, not a memoryview: `apply_mask` over bytes is about twice as fast (measured, 1.3 KiB).
            return apply_mask(view[start:end], view[start - 4:start])
        return bytes(view[start:end])

    def _message(self, view: bytes | bytearray, pos: int, start: int, end: int, opcode: int, t0: float) -> None:
        """A whole data message in one frame: forwarded, counted, and handed to the tap when there is one.

        The client's frame is masked again in one pass and the upstream's goes as received, recorded or not.
        Without a tap text is not checked here but by the endpoints (an invalid one is refused with 1007 by the
        upstream, and that close is passed on); a recorded session checks it here, before relaying it.
        """
        peer = self.peer
        session = self.session
        if peer is None or session is None or peer.state != "open":
            return  # the session is ending: nothing more is relayed
        tapped: bytes | None = None
        if session.tap is not None:
            # Recorded: the tap gets the payload as sent (text checked as UTF-8: invalid text is refused with 1007
            # before anything of it is relayed), but the frame itself goes on exactly as it would unrecorded, as
            # received or masked again in one pass, never rebuilt from the payload.
            tapped = self._payload(view, start, end)
            if opcode == _TEXT and not tapped.isascii():
                _check_utf8(tapped)
        if self.MASKED_INPUT:
            peer.forward_masked(view, pos, start, end)
        else:
            peer.forward_raw(view, pos, end)
        self.frames += 1
        self.bytes += end - start
        if not self.frames & _SAMPLE_MASK:
            session.sample_latency(self.DIRECTION, time.perf_counter() - t0)
        if tapped is not None:
            session.tap_frame(self.DIRECTION, tapped, opcode == _TEXT)

    def _relay_tapped(self, opcode: int, payload: bytes, t0: float) -> None:
        """A whole message of a recorded session (or a joined fragmented one): checked, forwarded, tapped."""
        text = opcode == _TEXT
        if text and not payload.isascii():
            _check_utf8(payload)
        peer = self.peer
        session = self.session
        if peer is None or session is None or peer.state != "open":
            return
        peer.forward(opcode, payload)
        self.frames += 1
        self.bytes += len(payload)
        if not self.frames & _SAMPLE_MASK:
            session.sample_latency(self.DIRECTION, time.perf_counter() - t0)
        session.tap_frame(self.DIRECTION, payload, text)

    def _fragment(self, first: int, opcode: int, payload: bytes, t0: float) -> None:
        """Fragments are joined and relayed as one message, as the recorder and the size cap see messages."""
        if opcode == CONTINUATION:
            if self._fragments is None:
                raise ProtocolError(1002, "continuation without a message")
        else:
            if self._fragments is not None:
                raise ProtocolError(1002, "new message before the last one ended")
            self._fragments = bytearray()
            self._fragment_opcode = opcode
        self._fragments += payload
        if len(self._fragments) > self.max_message:
            raise ProtocolError(1009, "message too big")
        if first & 0x80:
            whole = bytes(self._fragments)
            self._fragments = None
            if self.state == "open":
                self._relay_tapped(self._fragment_opcode, whole, t0)

    def _control(self, first: int, opcode: int, payload: bytes) -> None:
        if not first & 0x80 or len(payload) > 125:
            raise ProtocolError(1002, "fragmented or oversized control frame")
        if opcode == PING:
            if self.state != "open":
                return
            if self._write_paused:
                # Our peer is not reading: owe it one pong, for the latest ping (RFC 6455 5.5.3), so a ping flood
                # from a peer that never reads cannot grow our write buffer.
                self._pong_owed = bytes(payload)
            else:
                self.write_frame(PONG, bytes(payload))
        elif opcode == PONG:
            if self._ping_payload is not None and bytes(payload) == self._ping_payload:
                self._ping_payload = None
        elif opcode == CLOSE:
            code, reason = parse_close(bytes(payload))
            self.received_close = (code, reason)
            if self.state == "closing":
                self._finish_close()
            elif self.session is not None:
                self.session.leg_closed(self, code, reason)
        else:
            raise ProtocolError(1002, "unknown opcode")

    # --- writing ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Resume reading (paused from the handshake until the session joined the legs), handling whatever
        arrived meanwhile."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        if self._buffer:
            self.data_received(b"")

    def forward(self, opcode: int, payload: bytes) -> None:
        """Write a data message from the other leg."""
        self.write_frame(opcode, payload)

    def forward_raw(self, view: bytes | bytearray, pos: int, end: int) -> None:
        """Write an unmasked frame from the upstream leg as received (only the client leg does)."""
        raise NotImplementedError

    def forward_masked(self, view: bytes | bytearray, pos: int, start: int, end: int) -> None:
        """Write a masked frame from the client leg under our own mask (only the upstream leg does)."""
        raise NotImplementedError

    def write_frame(self, opcode: int, payload: bytes) -> None:
        raise NotImplementedError

    def close(self, code: int, reason: str) -> None:
        """Start (or answer) the closing handshake with `code`; the connection is dropped if it stalls."""
        transport = self.transport
        if self.state != "open" or transport is None:
            return
        self.state = "closing"
        if not transport.is_closing():
            self.write_frame(CLOSE, close_payload(code, reason))
        if self.received_close is not None:
            self._finish_close()
        else:
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self.abort)

    def fail(self, code: int, reason: str) -> None:
        """The peer broke the protocol: tell it why and end the session as if it had closed with `code`."""
        session = self.session
        self.close(code, reason)
        if session is not None:
            session.leg_failed(self, code)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _finish_close(self) -> None:
        """Both close frames are through: the server side closes TCP; a client waits for the server to."""
        raise NotImplementedError

    # --- keepalive -------------------------------------------------------------------------------------

    def keep_alive(self, interval: float | None) -> None:
        """Ping every `interval`; a ping unanswered by the next one drops the connection."""
        if interval is None or interval <= 0:
            return
        loop = asyncio.get_running_loop()

        def tick() -> None:
            if self.state != "open":
                return
            if self._ping_payload is not None:
                self.abort()
                return
            self._ping_payload = os.urandom(4)
            self.write_frame(PING, self._ping_payload)
            self._ping_timer = loop.call_later(interval, tick)

        self._ping_timer = loop.call_later(interval, tick)

    def _cancel_timers(self) -> None:
        for timer in (self._close_timer, self._ping_timer):
            if timer is not None:
                timer.cancel()
        self._close_timer = self._ping_timer = None


class ClientLeg(Leg):
    """The caller's connection; voicelog is its server."""

    MASKED_INPUT = True
    DIRECTION = Direction.CLIENT_TO_SERVICE

    def forward_raw(self, view: bytes | bytearray, pos: int, end: int) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if pos == 0 and end == len(view) and type(view) is bytes:
            transport.write(view)  # the common case: one socket read, one frame, no copy
        else:
            transport.write(bytes(view[pos:end]))

    def write_frame(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(opcode, payload))

    def _finish_close(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self.transport is not None:
            self.transport.close()


class UpstreamLeg(Leg):
    """The connection to the pipeline; voicelog is its client."""

    MASKED_INPUT = False
    DIRECTION = Direction.SERVICE_TO_CLIENT

    def forward_masked(self, view: bytes | bytearray, pos: int, start: int, end: int) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        # The client's header (its mask bit is set) with our key, and its payload unmasked and masked again in one
        # pass: XOR with a random `both`, our key being (client key XOR both).
        both = mask_key()
        ours = apply_mask(view[start - 4:start], both)
        transport.write(b"".join((view[pos:start - 4], ours, apply_mask(view[start:end], both))))

    def write_frame(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(masked_frame(opcode, payload))

    def _finish_close(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        # RFC 6455 7.1.1: the server closes the TCP connection first; we give it a moment, then close it.
        self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self.abort)
