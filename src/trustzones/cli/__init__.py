"""The ``trustzones`` command. Thin: it calls only the public API of the parts.

Every option can also be set with an environment variable: ``TRUSTZONES_CONFIG`` for
``--config`` and ``TRUSTZONES_<COMMAND>_<OPTION>`` for the others (click's convention).
"""

from __future__ import annotations

import sys
import traceback

import click

from trustzones.errors import TrustzonesError

__all__ = ["cli", "main"]


def _register(group: click.Group) -> None:
    from trustzones.cli import _core

    for cmd in _core.COMMANDS:
        group.add_command(cmd)
    import importlib

    for name in (
        "_demo",
        "_dlp",
        "_audit",
        "_keys",
        "_access",
        "_flows",
        "_provision",
        "_compliance",
        "_gateway",
        "_console",
    ):
        try:
            mod = importlib.import_module(f"trustzones.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"trustzones.cli.{name}":
                continue
            raise
        for attr in ("group", "COMMANDS"):
            obj = getattr(mod, attr, None)
            if isinstance(obj, click.Command):
                group.add_command(obj)
            elif isinstance(obj, list | tuple):
                for c in obj:
                    group.add_command(c)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_path",
    envvar="TRUSTZONES_CONFIG",
    metavar="PATH",
    help="trustzones.yaml to use [default: ./trustzones.yaml].",
)
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="trustzones")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """Trust zones for streaming data: classify, isolate, sanitise, audit."""
    from trustzones.cli._context import CliState

    st = CliState(config_path=config_path, verbose=verbose)
    ctx.obj = st
    ctx.call_on_close(st.close)
    if ctx.invoked_subcommand == "audit" and st.path.exists():
        _audit_defaults(ctx, st)


def _audit_defaults(ctx: click.Context, st: object) -> None:
    """Point the audit commands at the workspace's log and keys, and let them check that the
    reader is an authenticated principal holding the ``auditor`` role."""
    from trustzones.cli._audit import AUDITOR_CHECK
    from trustzones.cli._context import CliState

    assert isinstance(st, CliState)
    cfg = st.config()
    paths = {
        "db": str(cfg.audit_dir / "audit.db"),
        "key": str(cfg.state_dir / "audit.key"),
        "public_key": str(cfg.state_dir / "audit.pub"),
    }
    commands = ("tail", "search", "verify", "prove", "check-proof", "checkpoint")
    ctx.default_map = {"audit": dict.fromkeys(commands, paths)}

    def auditor(principal: str, _operation: str) -> bool:
        spec = cfg.principals.get(principal)
        if spec is None or "auditor" not in spec.roles:
            return False
        st.workspace().access.identity(principal)  # --as is an authenticated identity
        return True

    ctx.meta[AUDITOR_CHECK] = auditor


_register(cli)


def _cluster_down(err: object) -> bool:
    """Whether a librdkafka ``KafkaError`` says the cluster did not answer."""
    from confluent_kafka import KafkaError

    down = (
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
    )
    return isinstance(err, KafkaError) and err.code() in down


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    try:
        rv = cli.main(
            args=args,
            prog_name="trustzones",
            standalone_mode=False,
            auto_envvar_prefix="TRUSTZONES",
        )
        if isinstance(rv, int):
            return rv
    except TrustzonesError as exc:
        if verbose:
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        return 1
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        # A Kafka client error that no command turned into one of ours: still an error
        # message, not a traceback (-v shows where). Its text names no password.
        kafka = sys.modules.get("confluent_kafka")
        if kafka is None or not isinstance(exc, kafka.KafkaException):
            raise
        if verbose:
            traceback.print_exc()
        err = exc.args[0] if exc.args and isinstance(exc.args[0], kafka.KafkaError) else None
        text = err.str() if err is not None else str(exc)
        hint = " Is the cluster running and reachable?" if _cluster_down(err) else ""
        click.echo(f"error: Kafka: {text}.{hint}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
