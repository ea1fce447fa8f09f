"""Phone calls: Twilio Media Streams in and out of the same session pipeline as /ws.

    g711.py       μ-law / A-law and the 8 kHz <-> 16/24 kHz conversions
    messages.py   the Media Streams messages, and our mark names
    twilio.py     a session Channel over them, serving one call
    screening.py  answering machines: who picked up, and the agent's voicemail policy
    webhook.py    the TwiML that points a call at the stream, Twilio's request signature
    routes.py     the webhook route (POST /telephony/twilio/voice) and the signature check
    config.py     SERVER_TWILIO_* settings
"""

from services.server.telephony.config import TwilioSettings
from services.server.telephony.routes import make_router, signature_ok
from services.server.telephony.twilio import TwilioChannel, serve_media_stream

__all__ = ["TwilioChannel", "TwilioSettings", "make_router", "serve_media_stream", "signature_ok"]
