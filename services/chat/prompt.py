"""Few-shot prompt for base (non-instruction-tuned) models such as Gemma 3 270M.

A base model continues text, so the prompt shows it what a good spoken reply looks
like: a transcript where each answer is one or two plain sentences that open with
a one-word interjection, the way people start speaking ("Oh, ...", "Sure, ...").
That opening is a clause of its own, so speech can start after two tokens while
the rest is still being written. Generation stops at the end of the line.
"""

from __future__ import annotations

from services.chat.engines.base import ChatMessage

DEFAULT_SYSTEM = "A friendly voice assistant who answers in one or two short spoken sentences."

# Kept constant so its KV cache is reused across turns and sessions (prefix caching).
_EXAMPLES = [
    ("Hi there, how are you today?", "Oh, I'm doing well, thanks for asking. What can I do for you?"),
    ("What is a good way to relax after work?", "Well, a short walk or some quiet music helps most people unwind."),
    ("Can you tell me the capital of France?", "Sure, the capital of France is Paris."),
    ("I have been reading an old book about printing.", "Oh, that sounds fascinating. Old books say a lot about how people used to work."),
    ("The weather was terrible this morning.", "Ah, I'm sorry to hear that. I hope it clears up for the rest of your day."),
    ("He said he would come back tomorrow.", "Okay, so you will see him again tomorrow. That's good news."),
    ("In the winter of nineteen twenty.", "Hmm, that was a long time ago. What happened then?"),
]

HEADER = "The following is a transcript of phone calls with a helpful voice assistant.\n\n"


def build_prompt(messages: list[ChatMessage], open_user: bool = False) -> str:
    """Render chat messages as a few-shot transcript ending in an open assistant line.

    `open_user`: end instead inside the last user line, without its final punctuation,
    so the next-token distribution tells whether the user's sentence is finished. That
    text is a prefix of the reply prompt, so its KV cache is reused by the reply.
    """
    system = " ".join(m.content.strip() for m in messages if m.role == "system") or DEFAULT_SYSTEM
    lines = [HEADER]
    for user, reply in _EXAMPLES:
        lines.append(f"User: {user}\nAssistant: {reply}\n")
    lines.append(f"\nNew call. The assistant: {_one_line(system)}\n")
    for m in messages:
        if m.role == "user":
            lines.append(f"User: {_one_line(m.content)}\n")
        elif m.role == "assistant":
            lines.append(f"Assistant: {_one_line(m.content)}\n")
    if open_user:
        prompt = "".join(lines).rstrip("\n")
        return prompt.rstrip(".?!…")
    lines.append("Assistant:")
    return "".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


STOP = ("\n", "User:", "Assistant:")
