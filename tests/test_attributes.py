import pytest

from facray.attributes import (ATTRIBUTE_INDEX, ATTRIBUTES, IDENTITY_ATTRIBUTES, RENDERED_ATTRIBUTES,
                               resolve_attributes)


def test_forty_unique_names_in_official_order():
    assert len(ATTRIBUTES) == 40 and len(set(ATTRIBUTES)) == 40
    assert ATTRIBUTES[0] == "5_o_Clock_Shadow" and ATTRIBUTES[20] == "Male" and ATTRIBUTES[-1] == "Young"
    assert all(ATTRIBUTE_INDEX[a] == i for i, a in enumerate(ATTRIBUTES))


def test_subsets_are_attributes():
    assert len(IDENTITY_ATTRIBUTES) == 10
    assert set(IDENTITY_ATTRIBUTES) | set(RENDERED_ATTRIBUTES) <= set(ATTRIBUTES)


def test_resolve_orders_and_rejects_unknown():
    assert resolve_attributes("Smiling,Male") == ["Male", "Smiling"]
    assert resolve_attributes(None) == list(ATTRIBUTES)
    assert resolve_attributes("identity") == [a for a in ATTRIBUTES if a in IDENTITY_ATTRIBUTES]
    with pytest.raises(ValueError, match="Smilling"):
        resolve_attributes("Smilling")
