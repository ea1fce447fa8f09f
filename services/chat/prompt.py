"""Few-shot prompt for base (non-instruction-tuned) models such as Gemma 3 270M.

A base model continues text, so the prompt shows it what a good spoken reply looks
like: a transcript where each answer is one or two plain sentences that open with
a one-word interjection, the way people start speaking ("Oh, ...", "Sure, ...").
That opening is a clause of its own, so speech can start after two tokens while
the rest is still being written. Generation stops at the end of the line.
"""

from __future__ import annotations

import difflib
import re

from services.chat.engines.base import ChatMessage
from shared.protocol import Tool

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


def build_prompt(messages: list[ChatMessage], open_user: bool = False, tools: tuple[Tool, ...] = (),
                 calling: str | None = None) -> str:
    """Render chat messages as a few-shot transcript ending in an open assistant line.

    `open_user`: end instead inside the last user line, without its final punctuation,
    so the next-token distribution tells whether the user's sentence is finished. That
    text is a prefix of the reply prompt, so its KV cache is reused by the reply.
    `tools`: the assistant is told it can write `[calls NAME {arguments}]`; `calling`: the
    line is opened with that call, for its arguments to be written (under a grammar).
    """
    system = " ".join(m.text.strip() for m in messages if m.role == "system") or DEFAULT_SYSTEM
    lines = [HEADER]
    for user, reply in _EXAMPLES:
        lines.append(f"User: {user}\nAssistant: {reply}\n")
    lines.append(f"\nNew call. The assistant: {_one_line(system)}\n")
    if tools:
        listed = "; ".join(f"{t.function.name} ({_one_line(t.function.description)}; arguments: {_arguments(t) or 'none'})"
                           for t in tools)
        lines.append(f"The assistant can use tools by writing [{CALLS} name {{arguments as JSON}}]: {listed}. "
                     "It then answers from the tool's result in one short sentence, for example:\n" + _TOOL_EXAMPLE)
    for m in messages:
        if m.role == "user":
            lines.append(f"User: {_one_line(m.text)}\n")
        elif m.role == "assistant":
            calls = " ".join(f"[{CALLS} {c.function.name} {_one_line(c.function.arguments or '{}')}]" for c in m.tool_calls or [])
            lines.append(f"Assistant: {_one_line(' '.join(x for x in (m.text, calls) if x))}\n")
        elif m.role == "tool":
            lines.append(f"Tool result: {_one_line(m.text)}\n")
    if open_user:
        prompt = "".join(lines).rstrip("\n")
        return prompt.rstrip(".?!…")
    lines.append("Assistant:" if calling is None else f"Assistant: [{CALLS} {calling} ")
    return "".join(lines)


CALLS = "calls"
_TOOL_EXAMPLE = ("User: How warm is it in Rome?\nAssistant: [calls weather {\"city\": \"Rome\"}]\n"
                 "Tool result: {\"temperature_c\": 24, \"sky\": \"clear\"}\nAssistant: Oh, it's a clear day in Rome, 24 degrees.\n")
_OPENED = re.compile(r"^\s*\[" + CALLS + r" ([A-Za-z0-9_-]{1,64})[ {]")


def chosen_tool(text: str, tools: tuple[Tool, ...]) -> str | None:
    """Once a reply has opened a call (`[calls NAME `): the offered tool it means. A small
    model may copy the example's name: the closest offered one (the only one) is meant."""
    m = _OPENED.match(text)
    if m is None:
        return None
    names = [t.function.name for t in tools]
    if m.group(1) in names:
        return m.group(1)
    close = difflib.get_close_matches(m.group(1), names, 1, 0.3)
    return close[0] if close else names[0] if len(names) == 1 else None


def _arguments(tool: Tool) -> str:
    props = tool.function.parameters.get("properties")
    return ", ".join(str(k) for k in props) if isinstance(props, dict) else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


STOP = ("\n", "User:", "Assistant:")
