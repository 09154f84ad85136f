"""``fedwon deploy``: real SuperNodes over gRPC: a one-machine trial, certificates, node keys,
and what a client machine runs (a SuperNode with a warm ClientApp worker).

Owns the subcommands' options and what they print (copy-pastable commands); the work is
:mod:`fedwon.deploy`'s. ``supernode`` and ``worker`` hand their flags to the modules' own
parsers (``flower-supernode``'s flags pass through unchanged).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedwon.cli.args import SET_OPTION, ManySetCommand
from fedwon.cli.console import fail, one_line_errors, results_table, signals_interrupt
from fedwon.deploy.certs import LOCAL_HOSTS, make_certificates
from fedwon.deploy.errors import DeployError
from fedwon.deploy.keys import make_node_keys

deploy = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Real SuperNodes over gRPC: a one-machine trial, TLS certificates, node keys.",
)
console = Console(soft_wrap=True)  # commands printed here must stay copy-pastable


@deploy.command(cls=ManySetCommand)
def local(
    out: Annotated[
        Path | None,
        typer.Option(
            help="run directory: results, logs/, deploy/ (default runs/deploy-<recipe>-<strategy>"
            "-<time>)"
        ),
    ] = None,
    nodes: Annotated[int, typer.Option(help="SuperNodes to start (= num_clients)")] = 2,
    rounds: Annotated[int | None, typer.Option(help="rounds (default: the recipe's)")] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="recipe TOML (default sims/cross_silo.toml)")
    ] = None,
    set_: Annotated[list[str] | None, SET_OPTION] = None,
    tls: Annotated[
        bool, typer.Option(help="generate a CA and server certificate; use TLS")
    ] = False,
    auth: Annotated[bool, typer.Option(help="SuperNode authentication (needs --tls)")] = False,
    timeout: Annotated[float, typer.Option(help="seconds before giving up")] = 900.0,
    app_dir: Annotated[
        Path | None, typer.Option(help="directory whose pyproject.toml declares the Flower app")
    ] = None,
    isolation: Annotated[
        str,
        typer.Option(
            help="process: one warm ClientApp worker per SuperNode; subprocess: Flower's "
            "default, a flwr-clientapp process per message"
        ),
    ] = "process",
    poll_interval: Annotated[
        float,
        typer.Option(help="seconds between a SuperNode's polls for messages (Flower's: 3)"),
    ] = 0.5,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a recipe on a SuperLink and N SuperNodes on this machine (loopback gRPC)."""
    from fedwon.deploy.local import APP_DIR, DEFAULT_RECIPE, deploy_local
    from fedwon.run.process_guard import start_guard

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    stopped = ": every process of the deployment was stopped"
    with signals_interrupt(), one_line_errors(verbose, interrupted_hint=stopped):
        start_guard()  # should this command be killed outright, what it started ends too
        try:
            result = deploy_local(
                out,
                nodes,
                rounds,
                recipe=recipe or DEFAULT_RECIPE,
                overrides=set_ or [],
                tls=tls,
                auth=auth,
                timeout=timeout,
                app_dir=app_dir or APP_DIR,
                on_event=lambda line: console.print(line, highlight=False),
                isolation=isolation,
                poll_interval=poll_interval,
            )
        except DeployError as err:
            raise fail(err) from None
    console.print(results_table({result.summary["strategy"]: result.rows[-1]}))
    per_round = ", ".join(f"{s:.1f}" for s in result.round_s)
    console.print(
        f"wall {result.wall_s:.1f} s (flwr run {result.run_s:.1f} s; rounds {per_round} s) "
        f"→ {result.out}",
        highlight=False,
    )


@deploy.command()
def certs(
    directory: Annotated[Path, typer.Argument(help="where to write ca.crt, ca.key, server.*")],
    host: Annotated[
        list[str] | None,
        typer.Option(help="server DNS name or IP clients dial (repeatable); localhost is added"),
    ] = None,
    days: Annotated[int, typer.Option(help="validity of the server certificate")] = 825,
) -> None:
    """Make a CA and a SuperLink server certificate (ECDSA P-384) for a real deployment."""
    try:
        files = make_certificates(directory, [*(host or []), *LOCAL_HOSTS], days)
    except DeployError as err:
        raise fail(err) from None
    console.print(
        f"SuperLink: --ssl-ca-certfile {files.ca_cert} --ssl-certfile {files.server_cert} "
        f"--ssl-keyfile {files.server_key}\n"
        f"each SuperNode: --root-certificates ca.crt; flwr CLI: root-certificates = "
        f'"{files.ca_cert}"\nkeep {files.ca_key} offline',
        highlight=False,
    )


@deploy.command()
def keys(
    directory: Annotated[Path, typer.Argument(help="where to write node-<i> and node-<i>.pub")],
    nodes: Annotated[int, typer.Option(help="how many SuperNode key pairs")] = 2,
    prefix: Annotated[str, typer.Option(help="node name prefix")] = "node",
) -> None:
    """Make SuperNode authentication key pairs (ECDSA P-384, OpenSSH format)."""
    try:
        pairs = make_node_keys(directory, nodes, prefix)
    except DeployError as err:
        raise fail(err) from None
    for pair in pairs:
        console.print(
            f"{pair.name}: flwr supernode register {pair.public_key} <connection> --name "
            f"{pair.name}; its machine: --auth-supernode-private-key {pair.private_key.name}",
            highlight=False,
        )


PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@deploy.command(context_settings=PASS_THROUGH, add_help_option=False)
def supernode(ctx: typer.Context) -> None:
    """A Flower SuperNode for a client machine: flower-supernode's flags, a 0.5 s poll
    (--poll-interval), and with --isolation process fedwon's warm ClientApp worker (--help)."""
    from fedwon.deploy.supernode import main

    main(ctx.args)


@deploy.command(context_settings=PASS_THROUGH, add_help_option=False)
def worker(ctx: typer.Context) -> None:
    """fedwon's warm ClientApp worker for a SuperNode started with --isolation process (--help)."""
    from fedwon.deploy.worker import main

    main(ctx.args)
