"""Every ``corral`` command written in the README and the guides is one the command line accepts.

A guide that names a verb or a flag the parser no longer has is a guide a new user
cannot follow; this parses each command with the real parsers (nothing runs).
"""

from __future__ import annotations

import re

import pytest
from helpers.docs import DOCUMENTS, Command, blocks, commands

from corral._cli import main as cli_main
from corral._cli import registry as registry_cli
from corral._errors import UsageError

ALL = [c for doc in DOCUMENTS for b in blocks(doc) for c in commands(b)]


def parse(argv: tuple[str, ...]) -> None:
    """Parse ``corral ARGV`` as the command line would, without running the verb.

    A shell variable (``$PORT``, ``$(cat token)``) stands for a value the reader's
    shell fills in: it becomes ``1``, which every option's type accepts.
    """
    argv = tuple(re.sub(r"\$\(.*?\)|\$\{?\w+\}?", "1", a) for a in argv)
    options, verb, rest = cli_main._split_global(list(argv))
    assert verb is not None, "no verb"
    if verb == "registry":
        registry_cli._registry_parser().parse_args(rest)
    elif verb in cli_main._REGISTRY_CLIENT_VERBS:
        registry_cli._client_parser(verb).parse_args(rest)
    else:
        args = [*(f"--{k}={v}" for k, v in options.items()), verb, *rest]
        assert cli_main._parser(verb).parse_args(args).fn


def test_the_documents_hold_commands_to_check() -> None:
    # the reading itself can break: a README and guides without a single command found
    # would make the test below pass on nothing
    where = {c.block.path.name for c in ALL}
    assert {"registry.md", "install.md", "pdk.md", "tuf.md"} <= where
    assert len(ALL) >= 30


@pytest.mark.parametrize("command", ALL,
                         ids=[f"{c.block.where}:{' '.join(c.argv)[:40]}" for c in ALL])
def test_documented_command_parses(command: Command) -> None:
    try:
        parse(command.argv)
    except (UsageError, SystemExit) as exc:
        pytest.fail(f"{command.block.where}: `corral {' '.join(command.argv)}` is refused: {exc}")


@pytest.mark.parametrize("argv", [("lsit",), ("install", "--sauce", "x"), ("registry", "serv")])
def test_a_wrong_command_is_refused(argv: tuple[str, ...]) -> None:
    # the control: parse() refuses what the command line refuses
    with pytest.raises((UsageError, SystemExit)):
        parse(argv)
