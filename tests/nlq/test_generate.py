"""The generated training data: labels aligned with words, every intent and slot present, stable."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from cityos.nlq import generate
from cityos.nlq.generate import TIME_SURFACES, Names
from cityos.nlq.labels import INTENTS, SLOTS, TAGS, words
from cityos.nlq.timeexpr import resolve_time
from cityos.settings import SHARED_DIR


@pytest.fixture(scope="module")
def names() -> Names:
    return Names.from_files(SHARED_DIR / "data")


@pytest.fixture(scope="module")
def examples(names: Names) -> list[generate.Example]:
    return generate.generate(names, 60, seed=3)


def test_names_come_from_the_city_files(names: Names) -> None:
    assert {"Cologne", "Beijing"} <= set(names.cities)
    assert "Nippes" in names.districts and "Weidenpesch" in names.subdistricts
    assert len(names.streets) > 1000  # the Cologne street shapefile
    assert "Dongsi" in names.stations


def test_every_tag_belongs_to_a_word(examples: list[generate.Example]) -> None:
    for e in examples:
        assert len(words(e.text)) == len(e.tags), e.text
        assert set(e.tags) <= set(TAGS)
        for prev, tag in zip(["O", *e.tags], e.tags, strict=False):
            if tag.startswith("I-"):  # an I- continues a span of its own slot
                assert prev[2:] == tag[2:], (e.text, e.tags)


def test_all_intents_and_slots_occur(examples: list[generate.Example]) -> None:
    intents = Counter(e.intent for e in examples)
    assert set(intents) == set(INTENTS)
    slots = {t[2:] for e in examples for t in e.tags if t != "O"}
    assert slots == set(SLOTS) - {"SEVERITY"} or slots == set(SLOTS)


def test_same_seed_same_data(names: Names) -> None:
    a = generate.generate(names, 20, seed=5)
    b = generate.generate(names, 20, seed=5)
    c = generate.generate(names, 20, seed=6)
    assert [e.to_json() for e in a] == [e.to_json() for e in b]
    assert [e.to_json() for e in a] != [e.to_json() for e in c]


def test_split_is_stratified_and_disjoint(examples: list[generate.Example]) -> None:
    train, test = generate.split(examples, 0.2, seed=1)
    assert not {e.text for e in train} & {e.text for e in test}
    assert set(e.intent for e in test) == set(INTENTS)


@pytest.mark.parametrize("surface", TIME_SURFACES)
def test_every_time_surface_resolves(surface: str) -> None:
    """The generator only teaches time words that timeexpr can resolve."""
    as_of = datetime(2016, 12, 21, 22, 30, tzinfo=UTC)  # 23:30 local: every part of the day is past
    resolved = resolve_time(surface, as_of, "Europe/Berlin")
    assert resolved.start <= as_of
