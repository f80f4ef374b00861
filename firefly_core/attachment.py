"""A text file attached to a chat message: read, checked, and folded into the message's text.

No retrieval, no vector database: the file's whole text becomes part of the next message, so the
model sees all of it (or the attachment is refused with the reason). The stored user message holds
the text as sent and `meta["attachments"]` names the files, so the history and an export are
complete. Refusals: a missing or unreadable path, a file over `MAX_BYTES`, a binary file (a NUL
byte), text that is neither UTF-8 nor GB18030, and (checked by the front end with the token meter)
a message that would no longer fit the model's context window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import FireflyError

MAX_BYTES = 512 * 1024  # far above any small model's window; a bigger file is surely not meant


class AttachmentError(FireflyError):
    """A file that cannot be attached (the message says which rule it broke)."""


@dataclass(frozen=True)
class Attachment:
    name: str  # the file's name as shown on the chip and stored with the message
    text: str
    encoding: str  # "utf-8" or "gb18030"


def read_attachment(path: str | Path, max_bytes: int = MAX_BYTES) -> Attachment:
    """The text of the file at `path`, or an AttachmentError saying why it cannot be attached."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise AttachmentError(f"{p} is not a file", "give the path of a text file")
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise AttachmentError(
                f"{p.name} is {size / 1024:.0f} KiB; the limit for an attached file is {max_bytes // 1024} KiB",
                "attach a shorter excerpt of it",
            )
        raw = p.read_bytes()
    except OSError as e:
        raise AttachmentError(f"cannot read {p}: {e.strerror or e}", "check the path and its permissions") from None
    if b"\x00" in raw:
        raise AttachmentError(f"{p.name} is a binary file, not text", "attach a text file (.txt, .md, code, …)")
    for encoding in ("utf-8", "gb18030"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise AttachmentError(
            f"{p.name} is neither UTF-8 nor GBK/GB18030 text", "convert it to UTF-8 first, e.g. iconv -t UTF-8"
        )
    text = text.removeprefix("\ufeff")  # a BOM is not part of the text
    if not text.strip():
        raise AttachmentError(f"{p.name} is empty", "attach a file with some text")
    return Attachment(p.name, text, encoding)


def message_with_attachments(text: str, attachments: list[Attachment]) -> str:
    """The message the model gets (and the store keeps): each file's text under its name, then
    what the user typed."""
    parts = [f"[file: {a.name}]\n{a.text.rstrip()}\n[end of {a.name}]" for a in attachments]
    if text.strip():
        parts.append(text)
    return "\n\n".join(parts)


def attachments_meta(attachments: list[Attachment], tokens: list[int]) -> dict:
    """What the stored message says about its files (shown as chips again, exported with the chat)."""
    return {"attachments": [{"name": a.name, "tokens": n, "encoding": a.encoding} for a, n in zip(attachments, tokens)]}
