"""The TwiML that points a call at our media stream, and Twilio's request signature.

Twilio signs each request with `X-Twilio-Signature`: base64(HMAC-SHA1(auth token, the full URL
it requested + every POST parameter as key then value, sorted by key)). Its own libraries also
accept the URL with the default port added or removed, since Twilio is not consistent about it;
so do we.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit
from xml.etree import ElementTree as ET

STREAM_PATH = "/telephony/twilio"
VOICE_PATH = "/telephony/twilio/voice"
HOST = re.compile(r"^(?:[A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}(?::\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::\d{1,5})?$")
Params = Mapping[str, str] | Iterable[tuple[str, str]]


def stream_url(public_url: str, host: str | None) -> str:
    """wss:// URL of the media stream: from the configured public URL (its https:// becomes
    wss://), else from the request's Host header (Twilio accepts only wss, so wss)."""
    if public_url:
        parts = urlsplit(public_url)
        scheme = "ws" if parts.scheme == "http" else "wss"
        return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + STREAM_PATH, "", ""))
    if not host or not HOST.match(host):
        raise ValueError("no usable Host header: set SERVER_TWILIO_PUBLIC_URL")
    return f"wss://{host}{STREAM_PATH}"


def connect_stream_twiml(url: str, parameters: Mapping[str, str] | None = None) -> str:
    """<Response><Connect><Stream url=…/></Connect></Response>: a bidirectional stream for the
    rest of the call. `parameters` reach us as start.customParameters."""
    response = ET.Element("Response")
    stream = ET.SubElement(ET.SubElement(response, "Connect"), "Stream", url=url)
    for name, value in (parameters or {}).items():
        ET.SubElement(stream, "Parameter", name=name, value=value)
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(response, encoding="unicode")


def _pairs(params: Params | None) -> list[tuple[str, str]]:
    if params is None:
        return []
    if isinstance(params, Mapping):
        return [(k, v) for k, v in params.items()]
    return list(params)


def compute_signature(auth_token: str, url: str, params: Params | None = None) -> str:
    """The X-Twilio-Signature of a request to `url` with these POST parameters (repeated keys:
    each value, in sorted order, as Twilio does)."""
    signed = url + "".join(k + v for k, v in sorted(_pairs(params)))
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _port_variants(url: str) -> list[str]:
    """The URL as given, without its port and with the scheme's default port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = userinfo + "@" if userinfo else ""
    default = 443 if parts.scheme in ("https", "wss") else 80
    bare = urlunsplit(parts._replace(netloc=prefix + host))
    with_port = urlunsplit(parts._replace(netloc=f"{prefix}{host}:{parts.port or default}"))
    return list(dict.fromkeys([url, bare, with_port]))


def valid_signature(auth_token: str, url: str, params: Params | None, signature: str | None) -> bool:
    """Whether `signature` is Twilio's for this request (constant-time comparison)."""
    if not signature:
        return False
    pairs = _pairs(params)
    return any(hmac.compare_digest(compute_signature(auth_token, u, pairs).encode(), signature.encode())
               for u in _port_variants(url))
