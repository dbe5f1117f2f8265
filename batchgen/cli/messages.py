"""Commands to suggest to the user, rebuilt from click's parsed options, each flag once.

``sys.argv`` with a flag appended gave ``--retry-failed --retry-failed`` and kept ``--limit 40``
in the command meant to run the rest. A :class:`CommandLine` holds the options the user gave
(by name, already parsed) and renders a variant: some options set, some dropped.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click
from click.core import ParameterSource

from ..redact import redact_argument
from ..words import plural

# How an option is written back: a plain flag, a counted flag (-v -v), an option whose value is
# optional (``--retry-failed`` alone means "all"), or an option with a value.
FLAG, COUNT, OPTIONAL, VALUE = "flag", "count", "optional", "value"


@dataclass(frozen=True, slots=True)
class _Given:
    name: str
    opt: str
    how: str
    value: Any
    flag_value: Any = None


def _how(param: click.Option) -> str:
    if param.count:
        return COUNT
    if param.is_flag:
        return FLAG
    if param._flag_needs_value:  # click's marker for is_flag=False with a flag_value
        return OPTIONAL
    return VALUE


def _render_one(g: _Given) -> list[str]:
    if g.how == FLAG:
        return [g.opt] if g.value else []
    if g.how == COUNT:
        return [g.opt] * int(g.value or 0)
    if g.value is None:
        return []
    if g.how == OPTIONAL and g.value == g.flag_value:
        return [g.opt]
    if isinstance(g.value, float) and g.value.is_integer():
        return [g.opt, str(int(g.value))]
    if isinstance(g.value, float):
        return [g.opt, f"{g.value:g}"]
    return [g.opt, str(g.value)]


@dataclass(frozen=True, slots=True)
class CommandLine:
    """``batchgen <command> ARGS --options``: the options the user typed, parsed."""

    command: str
    arguments: tuple[str, ...]
    given: tuple[_Given, ...]
    options: Mapping[str, _Given]  # every option of the command, by name, for set=

    @classmethod
    def from_context(cls, ctx: click.Context) -> CommandLine:
        given: list[_Given] = []
        options: dict[str, _Given] = {}
        arguments: list[str] = []
        for param in ctx.command.params:
            name = param.name or ""
            value = ctx.params.get(name)
            if isinstance(param, click.Argument):
                if isinstance(value, tuple):
                    arguments.extend(str(v) for v in value)
                elif value is not None:
                    arguments.append(str(value))
                continue
            if not isinstance(param, click.Option):
                continue
            long = max(param.opts, key=len)
            g = _Given(name, long, _how(param), value, param.flag_value)
            options[name] = g
            if ctx.get_parameter_source(name) in (
                ParameterSource.COMMANDLINE,
                ParameterSource.ENVIRONMENT,
            ):
                given.append(g)
        return cls(ctx.info_name or ctx.command.name or "", tuple(arguments), tuple(given), options)

    def render(self, *, set: Mapping[str, Any] | None = None, drop: tuple[str, ...] = ()) -> str:
        """The command with ``set`` options given these values (in place, or appended) and the
        ``drop`` options left out. A value of None in ``set`` drops the option too."""
        changes = dict(set or {})
        args = ["batchgen", self.command, *self.arguments]
        for g in self.given:
            if g.name in drop:
                continue
            if g.name in changes:
                value = changes.pop(g.name)
                g = _Given(g.name, g.opt, g.how, value, g.flag_value)
            args.extend(_render_one(g))
        for name, value in changes.items():
            base = self.options.get(name)
            if base is None or name in drop:
                continue
            args.extend(_render_one(_Given(name, base.opt, base.how, value, base.flag_value)))
        # Keys are never options (they come from the environment), but a URL could carry one.
        # Argument by argument, so a short key inside a longer file name is left alone.
        return shlex.join(redact_argument(a) for a in args)


# The budget suggested to continue covers the rest at the estimate plus this margin: a request
# is sent only while spend + its reserve (the estimate plus a thinking allowance, ~8% above the
# estimate for a 4K image) fits, and answers vary.
BUDGET_MARGIN = 1.10


def suggest_budget(spent_usd: float, rest_usd: float, current: float | None = None) -> float:
    """A budget that covers what is spent plus the rest, rounded up to 10 cents, and always
    above the current one: "raise --budget" must never be followed by the same value."""
    value = math.ceil((spent_usd + rest_usd * BUDGET_MARGIN) * 10 - 1e-9) / 10
    if current is not None and value <= current:
        value = math.ceil(current * 10 + 1) / 10
    return value


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    reached: str | None  # the run cannot send a single request: exit 3 before anything
    warning: str | None  # the budget covers only part of the run


def check_budget(
    budget: float | None, spent_usd: float, estimate_usd: float, pending: int, cmd: CommandLine
) -> BudgetCheck:
    """The budget against the folder's spend and the estimate, before the run starts."""
    if budget is None or pending == 0:
        return BudgetCheck(None, None)
    per_image = estimate_usd / pending if pending else 0.0
    left = budget - spent_usd
    covers = pending if per_image == 0 else max(0, min(pending, math.floor(left / per_image)))
    if left <= 0 or covers == 0:
        new = suggest_budget(spent_usd, estimate_usd, budget)
        return BudgetCheck(
            f"budget reached before starting: this folder has already spent ${spent_usd:.2f} of "
            f"the ${budget:.2f} budget, and the {plural(pending, 'job')} to run are estimated at "
            f"${estimate_usd:.2f}; to continue, raise --budget: "
            + cmd.render(set={"budget": new}),
            None,
        )
    if covers < pending:
        return BudgetCheck(
            None,
            f"the budget covers about {covers} of {plural(pending, 'image')} "
            f"(${budget:.2f} budget, ${spent_usd:.2f} already spent in this folder, "
            f"${estimate_usd:.2f} estimated); the run stops when it is reached",
        )
    return BudgetCheck(None, None)
