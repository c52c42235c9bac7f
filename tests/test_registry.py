"""Policy registry: names, `module:Class` loading, protocol validation, settings."""

from __future__ import annotations

import numpy as np
import pytest

from policies.base import Policy
from policies.registry import REGISTRY, make_policy, policy_class, validate_policy_class


class MyPolicy:
    """A user's own policy that does not subclass Policy: duck-typed protocol."""

    static = True

    def __init__(self, action: int = 1) -> None:
        self.action = action

    def act(self, day, obs):
        return np.full(len(obs), self.action, dtype=np.int64)


class NoAct:
    static = True


class ActWithoutObs:
    static = True

    def act(self, day):
        return None


class NoStatic:
    def act(self, day, obs):
        return None


class FitNotCallable:
    static = True
    fit = 3

    def act(self, day, obs):
        return None


ME = __name__


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"arms\[0\]\.policy: unknown policy 'uplfit'; valid names are") as e:
        policy_class("uplfit", "arms[0].policy")
    for name in REGISTRY:
        assert repr(name) in str(e.value)
    assert "module.path:ClassName" in str(e.value)


@pytest.mark.parametrize("name", ["control", "random", "blanket", "oracle"])
def test_builtin_policies_load_and_follow_the_protocol(name):
    p = make_policy(name)
    assert isinstance(p, Policy) and p.name == name
    validate_policy_class(type(p))


def test_module_class_loads_a_users_policy_with_settings():
    p = make_policy(f"{ME}:MyPolicy", action=2)
    assert isinstance(p, MyPolicy) and p.action == 2


@pytest.mark.parametrize(
    "name, match",
    [
        (f"{ME}:NoAct", r"is not a policy: it needs an act\(day, obs\) method"),
        (f"{ME}:ActWithoutObs", r"act\(self, day, obs\) taking a day and an observation"),
        (f"{ME}:NoStatic", "a 'static' attribute"),
        (f"{ME}:FitNotCallable", r"a callable fit\(logs\)"),
        (f"{ME}:Missing", f"module '{ME}' has no class 'Missing'"),
        (f"{ME}:ME", "has no class 'ME'"),
        ("no_such_module_xyz:Policy", "cannot import module 'no_such_module_xyz'"),
        ("", "expected a policy name"),
    ],
)
def test_bad_policy_classes_are_rejected_with_the_reason(name, match):
    with pytest.raises(ValueError, match=match):
        policy_class(name, "arms[1].policy")


def test_bad_settings_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"bad settings for policy 'blanket'.*valid settings are \['action', 'day'\]"):
        make_policy("blanket", colour="red")
    with pytest.raises(ValueError, match=r"valid settings are \['action'\]"):
        make_policy(f"{ME}:MyPolicy", speed=1)
