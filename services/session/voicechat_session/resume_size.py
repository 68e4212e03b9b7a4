"""Sizes of resume tokens (resume.py), without its dependencies: settings check the budget fits a frame.

A token is ``v1.<kid>.<base64url(nonce ‖ ciphertext ‖ tag)>``; AES-GCM's ciphertext is as long as the
plaintext (the state's JSON), base64 makes 4 characters of 3 bytes.
"""

from __future__ import annotations

import base64
import math

TOKEN_VERSION = "v1"
NONCE_BYTES = 12
TAG_BYTES = 16
KID_BYTES = 6
"""Key id length (bytes of SHA-256 of the derived key): enough to tell a handful of keys apart."""
START_MESSAGE_OVERHEAD = 1024
"""Bytes of a ``start`` message besides its token (type, sample rate, voice, speed, JSON punctuation)."""
MESSAGE_JSON_OVERHEAD = 40
"""Bytes one history message adds to the JSON besides its content: ``{"role":"assistant","content":""},``."""
STATE_JSON_OVERHEAD = 256
"""Bytes of the state's JSON besides the history (session id, times, voice, speed, field names)."""
MAX_UTF8_BYTES_PER_CHAR = 4


def b64encode(data: bytes) -> str:
    """base64url without padding (tokens travel in JSON and logs; ``=`` and ``/`` would only get in the way)."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _header_chars() -> int:
    return len(TOKEN_VERSION) + 1 + len(b64encode(bytes(KID_BYTES))) + 1


def max_token_chars(max_frame_bytes: int) -> int:
    """The longest token that still fits a ``start`` message within the frame limit."""
    return max_frame_bytes - START_MESSAGE_OVERHEAD


def max_plaintext_bytes(max_frame_bytes: int) -> int:
    """The largest state JSON whose token is at most :func:`max_token_chars` long."""
    body_chars = max_token_chars(max_frame_bytes) - _header_chars()
    return (body_chars * 3) // 4 - NONCE_BYTES - TAG_BYTES


def budget_plaintext_bytes(history_max_chars: int, history_max_messages: int) -> int:
    """The largest state JSON the history budget allows for ordinary text (UTF-8, up to 4 bytes a char)."""
    return (
        history_max_chars * MAX_UTF8_BYTES_PER_CHAR
        + history_max_messages * MESSAGE_JSON_OVERHEAD
        + STATE_JSON_OVERHEAD
    )


def token_chars_for(plaintext_bytes: int) -> int:
    """The length of the token holding ``plaintext_bytes`` of state."""
    return _header_chars() + math.ceil((plaintext_bytes + NONCE_BYTES + TAG_BYTES) * 4 / 3)
