"""The errors warmstart raises for its users: each message is one line meant for a person.

``ConfigError``: an invalid input, refused before anything runs (the CLI exits 2).
``TrialError``: a trial stopped for a reason the user can act on (exit 1).
``StrategyError``: a strategy or other plugin code failed or broke its contract.
``StoreUnavailable``: the object store stopped answering during a run (exit 1, with the resume command).
"""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with every character that would break or hide a terminal line (newlines,
    the separators ``str.splitlines`` honours, other control characters) escaped, so a
    message quoting a user's input stays one visible line."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in str(text))


class _OneLine:
    def __init__(self, message: object = "", *args) -> None:
        super().__init__(one_line(message), *args)


class ConfigError(_OneLine, ValueError):
    """An invalid configuration value. The message is one line meant for the user."""


class TrialError(_OneLine, RuntimeError):
    """A trial that stopped for a reason the user can act on (a strategy that failed, a
    full disk, divergence, a busy trial).  The message is one line meant for the user;
    the CLI exits with status 1 and shows the traceback only with --debug."""


class StrategyError(TrialError):
    """A strategy (or other plugin code) that raised, or broke its contract, at run time:
    which one, in which round, what was expected and what came back."""


class StoreUnavailable(TrialError):
    """The object store holding the results stopped answering (or refused the credentials,
    expired ones say) while a run was going, past its timeouts and retries: completed rounds
    are kept, and the same command with ``--resume`` continues once the store answers."""
