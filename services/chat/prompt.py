"""Few-shot prompt for base (non-instruction-tuned) models such as Gemma 3 270M.

A base model continues text, so the prompt shows it what a good spoken reply looks
like: a short transcript with one or two plain sentences per answer. Generation
stops at the end of the line, so the reply is exactly one assistant line.
"""

from __future__ import annotations

from services.chat.engines.base import ChatMessage

DEFAULT_SYSTEM = "A friendly voice assistant who answers in one or two short spoken sentences."

# Kept constant so its KV cache is reused across turns and sessions (prefix caching).
_EXAMPLES = [
    ("Hi there, how are you today?", "I'm doing well, thanks for asking. What can I do for you?"),
    ("What is a good way to relax after work?", "A short walk or some quiet music helps most people unwind."),
    ("Can you tell me the capital of France?", "Sure, the capital of France is Paris."),
    ("I am reading an old book about printing.", "That sounds fascinating. Old books tell us a lot about how people used to work."),
    ("The weather was terrible this morning.", "Sorry to hear that. I hope it clears up for the rest of your day."),
]

HEADER = "The following is a transcript of a phone call with a helpful voice assistant.\n"


def build_prompt(messages: list[ChatMessage], assistant: str = "Assistant") -> str:
    """Render chat messages as a few-shot transcript ending in an open assistant line."""
    system = " ".join(m.content.strip() for m in messages if m.role == "system") or DEFAULT_SYSTEM
    lines = [HEADER]
    for user, reply in _EXAMPLES:
        lines.append(f"User: {user}\nAssistant: {reply}\n")
    lines.append(f"\n(New call. About the assistant: {_one_line(system)})\n")
    for m in messages:
        if m.role == "user":
            lines.append(f"User: {_one_line(m.content)}\n")
        elif m.role == "assistant":
            lines.append(f"Assistant: {_one_line(m.content)}\n")
    lines.append("Assistant:")
    return "".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


STOP = ("\n", "User:", "Assistant:")
