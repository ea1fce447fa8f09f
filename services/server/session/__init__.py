"""A conversation over one connection, in parts with one job each:

    session.py     bytes in, detector and live STT, dispatch (never sends itself)
    channel.py     the outbox: everything for the client, sent by one writer task
    playout.py     the play clock, playback acks, the echo reference
    barge.py       speech over our reply: the user, a backchannel or our echo? (pure)
    turn_taker.py  whose turn it is: opens, confirms, interrupts turns; the history
    turn.py        one turn: STT -> chat -> TTS, output held until confirmed
    detector.py    the speech detector from settings and overrides
"""

from services.server.session.channel import Channel, Outbox, WebSocketChannel
from services.server.session.detector import make_detector, new_detector
from services.server.session.session import Session

__all__ = ["Channel", "Outbox", "Session", "WebSocketChannel", "make_detector", "new_detector"]
