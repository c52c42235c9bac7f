"""Policies by name.

Built-in policies are listed in :data:`REGISTRY` as ``"module:Class"`` paths
and imported lazily (learned policies pull in heavy libraries).  A name of
the form ``module.path:ClassName`` loads a user's own policy class, which is
checked against the protocol (an ``act(day, obs)`` method, a ``static``
attribute; ``fit`` optional).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from policies.base import Policy

REGISTRY: dict[str, str] = {
    "control": "policies.baselines:ControlPolicy",
    "random": "policies.baselines:RandomPolicy",
    "blanket": "policies.baselines:BlanketPolicy",
    "oracle": "policies.oracle:OraclePolicy",
    "uplift": "policies.uplift:UpliftPolicy",
    "ltv": "policies.ltv:LTVPolicy",
    "rl": "policies.rl.policy:RLPolicy",
    "recommender": "policies.recommender:RecommenderPolicy",
}


def _import(path: str, field: str) -> type:
    if ":" not in path:
        raise ValueError(f"{field}: expected 'module.path:ClassName', got {path!r}")
    mod_name, _, cls_name = path.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as err:
        raise ValueError(f"{field}: cannot import module {mod_name!r} ({err})") from None
    cls = getattr(mod, cls_name, None)
    if cls is None or not inspect.isclass(cls):
        raise ValueError(f"{field}: module {mod_name!r} has no class {cls_name!r}")
    return cls


def validate_policy_class(cls: type, field: str = "policy") -> type:
    """Check a class against the policy protocol; raise a ValueError naming what is missing."""
    missing = []
    if not callable(getattr(cls, "act", None)):
        missing.append("an act(day, obs) method")
    elif len(inspect.signature(cls.act).parameters) < 3:
        missing.append("act(self, day, obs) taking a day and an observation")
    if not hasattr(cls, "static"):
        missing.append("a 'static' attribute (True: act on day 1 only)")
    fit = getattr(cls, "fit", None)
    if fit is not None and not callable(fit):
        missing.append("a callable fit(logs) (or none at all)")
    if missing:
        raise ValueError(f"{field}: class {cls.__module__}.{cls.__name__} is not a policy: it needs " + "; ".join(missing))
    return cls


def policy_class(name: str, field: str = "policy") -> type:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{field}: expected a policy name, got {name!r}")
    if ":" in name:
        return validate_policy_class(_import(name, field), field)
    if name not in REGISTRY:
        raise ValueError(
            f"{field}: unknown policy {name!r}; valid names are {sorted(REGISTRY)} "
            "or 'module.path:ClassName' for your own policy class"
        )
    return _import(REGISTRY[name], field)


def make_policy(name: str, field: str = "policy", **kwargs: Any) -> Policy:
    """Instantiate a policy by registry name or ``module:Class`` with settings as keyword arguments."""
    cls = policy_class(name, field)
    try:
        sig = inspect.signature(cls)
        sig.bind(**kwargs)
    except TypeError as err:
        params = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
        raise ValueError(f"{field}: bad settings for policy {name!r}: {err}; valid settings are {params}") from None
    return cls(**kwargs)
