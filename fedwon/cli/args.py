"""Several ``key=value`` overrides after one ``--set``, for every fedwon command that takes them.

Click gives an option exactly one value per occurrence, so ``--set strategy=fedwon
aggregator=fedadam`` used to fail with "Got unexpected extra arguments" although it reads
naturally and is how ``flwr run --run-config "set='a=1 b=2'"`` spells it. ``ManySetCommand``
rewrites the words that follow a ``--set`` (or ``-s``) value and contain ``=`` into further
``--set`` occurrences before click parses them, so ``--set a=1 b=2``, ``--set a=1 --set b=2`` and
``-s a=1`` all mean the same. A bare word beyond the command's own arguments (a typo, an override
without ``--set``) is refused in one line instead of click's boxed usage error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import click
import typer
from typer.core import TyperCommand

from fedwon.cli.console import fail

SET_OPTIONS = ("--set", "-s")


def expand_sets(args: Sequence[str], takes_value: Iterable[str], positionals: int) -> list[str]:
    """``args`` with every ``key=value`` word that follows a ``--set`` group turned into its own
    ``--set key=value``; raises ``ValueError`` naming the first positional word beyond
    ``positionals`` (options in ``takes_value`` consume the next word as their value)."""
    valued = set(takes_value) | set(SET_OPTIONS)
    out: list[str] = []
    in_set, seen = False, 0
    words = iter(args)
    for word in words:
        if word == "--":  # everything after is positional, as click reads it
            out += [word, *words]
            break
        if in_set and "=" in word and not word.startswith("-"):
            out += [SET_OPTIONS[0], word]
            continue
        in_set = False
        if word in valued:
            out.append(word)
            value = next(words, None)
            if value is not None:
                out.append(value)
            in_set = word in SET_OPTIONS
            continue
        out.append(word)
        if word.startswith("--set=") or (word.startswith("-s") and not word.startswith("--")):
            in_set = True  # --set=a=1 or -sa=1: the value is attached
        elif not word.startswith("-") or word == "-":
            seen += 1
            if seen > positionals:
                hint = f"--set {word}" if "=" in word else "key=value after --set"
                raise ValueError(f"unexpected argument {word!r} (an override is written {hint})")
    return out


def unknown_option(word: str, known: set[str]) -> bool:
    """``word`` is an option the command does not have (its value then looks like a stray
    word: the unknown option is the error to report)."""
    if not word.startswith("-") or word in ("-", "--"):
        return False
    name = word.split("=", 1)[0] if word.startswith("--") else word[:2]
    return name not in known


class ManySetCommand(TyperCommand):
    """A typer command whose ``--set`` takes one or more ``key=value`` words per occurrence."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = [
            name
            for p in self.params
            if isinstance(p, click.Option) and not p.is_flag and not p.count
            for name in (*p.opts, *p.secondary_opts)
        ]
        positionals = sum(
            max(p.nargs, 0) for p in self.params if isinstance(p, click.Argument)
        )  # nargs -1 (any number) never makes a word stray
        unlimited = any(isinstance(p, click.Argument) and p.nargs < 0 for p in self.params)
        if "--help" not in args and not ctx.resilient_parsing:
            try:
                args = expand_sets(args, takes_value, len(args) if unlimited else positionals)
            except ValueError as err:
                known = {name for p in self.params for name in (*p.opts, *p.secondary_opts)}
                if any(unknown_option(w, known) for w in args):
                    return super().parse_args(ctx, args)  # click names the unknown option
                raise fail(str(err)) from None
        return super().parse_args(ctx, args)


# ``--set key=value``: one definition for every command that takes overrides
SET_OPTION = typer.Option(
    "--set", "-s", help="Override: key=value; several may follow one --set (repeatable)."
)
