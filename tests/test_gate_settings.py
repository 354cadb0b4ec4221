import pytest

from core.errors import ConceptError
from core.gate_settings import GateSettings


@pytest.mark.parametrize("field,value,message", [
    ("beta", 2.5, "beta is 2.5; expected a number from 0.0 to 2.0"),
    ("tau", 0.0, "tau is 0.0; expected a number from 0.01 to 1.0"),
    ("strength", -1.0, "strength is -1.0"),
    ("strength", float("nan"), "strength is nan"),
    ("start_percent", 2.0, "start_percent is 2.0"),
    ("key_lock", "both", "key_lock is 'both'; expected 'local' or 'global'"),
])
def test_out_of_range_settings_are_refused(field, value, message):
    with pytest.raises(ConceptError, match=message) as info:
        GateSettings(**{field: value}).validated("Gate Strength")
    assert str(info.value).startswith("Gate Strength:")


def test_schedule_must_be_ordered():
    with pytest.raises(ConceptError, match="end_percent \\(0.2\\) is before start_percent \\(0.5\\)"):
        GateSettings(start_percent=0.5, end_percent=0.2).validated("Gate Strength")


def test_valid_settings_pass_and_are_floats():
    s = GateSettings(strength=1, beta=0, tau=1, key_lock="global").validated("x")
    assert isinstance(s.strength, float) and s.key_lock == "global" and not s.scheduled
    assert GateSettings(end_percent=0.5).scheduled
