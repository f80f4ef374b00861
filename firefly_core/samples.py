"""The sample data shipped inside the package (firefly_core/assets/): where each file is.

They travel in the wheel, so a `pipx install firefly-tui` user has an offline demo: `firefly data
sample` prints these paths (or copies the files with --copy), and the app's Train form offers them.
A leaf: only the standard library.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# kind -> file name in firefly_core/assets/ (what each holds: assets/README.md in the repository)
SAMPLE_FILES = {
    "instructions": "sample_instructions.jsonl",  # 300 single-turn Firefly rows {kind, input, target}
    "conversations": "sample_conversations.jsonl",  # 40 multi-turn {conversation: [{human, assistant}]}
    "messages": "sample_messages.jsonl",  # 10 OpenAI-style {messages: [{role, content}]}
    "preferences": "sample_preferences.jsonl",  # preference pairs {prompt, chosen, rejected} for DPO
}


def assets_dir() -> Path:
    """The package's assets folder (a real folder: firefly is installed unzipped)."""
    return Path(str(resources.files("firefly_core") / "assets"))


def sample_path(kind: str = "instructions") -> Path:
    """The shipped sample file of `kind` (a key of SAMPLE_FILES)."""
    return assets_dir() / SAMPLE_FILES[kind]


def sample_files() -> dict[str, Path]:
    """Every shipped sample file, by kind."""
    return {kind: sample_path(kind) for kind in SAMPLE_FILES}
