"""Deprecated: the registry and its constraints live in ``engine.schema.registry``, the errors in ``engine.errors``.

Plugins written before the move imported ``ConfigError``, ``Interval``, ``OneOf`` … from
here; they keep working, with a DeprecationWarning that names the new place.
"""

import warnings

from engine.errors import ConfigError  # noqa: F401
from engine.schema.registry import Interval, Nullable, OneOf, Registry, Type, check_value  # noqa: F401

warnings.warn(
    "strategies.registry is deprecated: import Interval, OneOf, Registry … from engine.schema.registry "
    "and ConfigError from engine.errors",
    DeprecationWarning,
    stacklevel=2,
)
