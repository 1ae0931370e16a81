"""Compatibility alias: the registry and its constraints live in ``engine.registry``.

Plugins written before the move imported ``ConfigError``, ``Interval``, ``OneOf`` … from
here; they keep working.  New code imports from ``engine.registry``.
"""

from engine.registry import *  # noqa: F403
from engine.registry import ConfigError, Interval, Nullable, OneOf, Registry, Type, check_value  # noqa: F401
