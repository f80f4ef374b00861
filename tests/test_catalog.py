"""The catalog: the seeds' Firefly models with their formats, well-formed entries, lookup."""

from __future__ import annotations

import pytest

from firefly_core.models.catalog import CatalogEntry, catalog, find_entry
from firefly_core.formats import FORMAT_NAMES

SEEDS = {
    "YeungNLP/firefly-1b4": ("firefly-v1", "chat"),
    "YeungNLP/firefly-2b6": ("firefly-v1", "chat"),
    "YeungNLP/firefly-2b6-v2": ("firefly-v2", "chat"),
    "YeungNLP/bloom-1b4-zh": ("firefly-v1", "base"),
    "YeungNLP/bloom-2b6-zh": ("firefly-v1", "base"),
}


def test_the_seeds_models_are_there_with_their_formats():
    by_id = {e.id: e for e in catalog()}
    for model_id, (fmt, kind) in SEEDS.items():
        assert by_id[model_id].prompt_format == fmt and by_id[model_id].kind == kind
        assert "zh" in by_id[model_id].languages


@pytest.mark.parametrize("entry", catalog(), ids=lambda e: e.id)
def test_entries_are_well_formed(entry: CatalogEntry):
    org, name = entry.id.split("/")
    assert org and name and " " not in entry.id
    assert entry.prompt_format in FORMAT_NAMES
    assert entry.download_size_gb > 0 and entry.params.endswith("B")
    assert entry.languages and entry.note and entry.kind in ("chat", "base")


def test_ids_are_unique_and_lookup_is_case_insensitive():
    ids = [e.id.lower() for e in catalog()]
    assert len(ids) == len(set(ids))
    assert find_entry("yeungnlp/FIREFLY-1b4").id == "YeungNLP/firefly-1b4"
    assert find_entry("nobody/nothing") is None


def test_small_chat_models_without_and_with_remote_code():
    chat_template = [e for e in catalog() if e.prompt_format == "chat_template" and not e.needs_remote_code]
    assert len(chat_template) >= 3 and all("zh" in e.languages for e in chat_template)
    assert any(e.needs_remote_code for e in catalog()), "the opt-in must be visible in the catalog"
