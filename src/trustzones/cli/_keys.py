"""``trustzones keys``: create, rotate, rewrap, revoke, status and shred zone keys.

Keys live in a local keystore directory (``--keystore``; KEKs wrapped under the master key from
``--master-key-file`` or ``TRUSTZONES_MASTER_KEY``) or in Vault/OpenBao Transit
(``--vault-addr``/``--vault-token``). Each zone's key table is ``<keystore>/<zone>.keys.sqlite``
unless ``--key-table`` names another file.

Example::

    trustzones keys new-master-key --out master.key
    trustzones keys create --zone payments --keystore keys/ --master-key-file master.key
    trustzones keys rotate --zone payments --keystore keys/ --master-key-file master.key
    trustzones keys status --keystore keys/ --master-key-file master.key --json
    trustzones keys shred --zone payments --subject cust-42 --yes --keystore keys/ ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from trustzones.keys import (
    KeyAdmin,
    KeystoreError,
    LocalKeystore,
    MasterKey,
    SqliteKeyTable,
    VaultTransitKeystore,
)
from trustzones.keys._local import DEFAULT_MASTER_KEY_ENV

__all__ = ["group"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class _Options:
    keystore_dir: Path | None
    master_key_file: Path | None
    key_table: Path | None
    vault_addr: str | None
    vault_token: str | None
    vault_mount: str


def _store_options(f: F) -> F:
    options = [
        click.option(
            "--keystore",
            "keystore_dir",
            type=click.Path(file_okay=False, path_type=Path),
            envvar="TRUSTZONES_KEYSTORE",
            help="Keystore directory: local KEK files and the zones' key tables "
            "[default: the workspace's, with each zone's own master key and key table].",
        ),
        click.option(
            "--master-key-file",
            type=click.Path(dir_okay=False, path_type=Path),
            envvar="TRUSTZONES_MASTER_KEY_FILE",
            help=f"Master key file (mode 0600). Default: ${DEFAULT_MASTER_KEY_ENV} (base64).",
        ),
        click.option(
            "--key-table",
            type=click.Path(dir_okay=False, path_type=Path),
            envvar="TRUSTZONES_KEY_TABLE",
            help="The zone's key table file (default <keystore>/<zone>.keys.sqlite).",
        ),
        click.option(
            "--vault-addr",
            envvar="TRUSTZONES_VAULT_ADDR",
            help="Use Vault/OpenBao Transit at this address instead of local KEK files.",
        ),
        click.option("--vault-token", envvar="TRUSTZONES_VAULT_TOKEN", help="Vault token."),
        click.option(
            "--vault-mount",
            default="transit",
            show_default=True,
            envvar="TRUSTZONES_VAULT_MOUNT",
            help="Transit mount path.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _opts(**kw: Any) -> _Options:
    return _Options(
        keystore_dir=kw["keystore_dir"],
        master_key_file=kw["master_key_file"],
        key_table=kw["key_table"],
        vault_addr=kw["vault_addr"],
        vault_token=kw["vault_token"],
        vault_mount=kw["vault_mount"],
    )


def _workspace_keys() -> Any:
    """The workspace's keys when no keystore is named and a trustzones.yaml is in reach."""
    from trustzones.cli._context import CliState

    root = click.get_current_context().find_root().obj
    if isinstance(root, CliState) and root.path.exists():
        return root.workspace().keys
    raise KeystoreError(
        "no keystore: pass --keystore DIR (or TRUSTZONES_KEYSTORE), or run inside a workspace"
    )


def _open_keystore(o: _Options) -> LocalKeystore | VaultTransitKeystore:
    if o.keystore_dir is None and not o.vault_addr:
        ks: LocalKeystore = _workspace_keys().keystore()
        return ks
    if o.vault_addr:
        return VaultTransitKeystore(url=o.vault_addr, token=o.vault_token, mount=o.vault_mount)
    if o.master_key_file is not None:
        master = MasterKey.from_file(o.master_key_file)
    elif os.environ.get(DEFAULT_MASTER_KEY_ENV):
        master = MasterKey.from_env()
    else:
        raise KeystoreError(
            f"no master key: pass --master-key-file or set {DEFAULT_MASTER_KEY_ENV} "
            "(create one with `trustzones keys new-master-key --out FILE`)"
        )
    assert o.keystore_dir is not None
    return LocalKeystore(o.keystore_dir, master_key=master)


@contextmanager
def _admin(o: _Options, zone: str) -> Iterator[KeyAdmin]:
    if o.keystore_dir is None and not o.vault_addr and o.key_table is None:
        wk = _workspace_keys()
        table = wk.table(zone)
        try:
            yield KeyAdmin(zone, keystore=wk.keystore(), table=table)
        finally:
            table.close()
        return
    base = o.keystore_dir or Path(".")
    table_path = o.key_table or base / f"{zone}.keys.sqlite"
    if not table_path.parent.exists():
        table_path.parent.mkdir(parents=True, mode=0o700)
    with _open_keystore(o) as keystore, SqliteKeyTable(table_path) as table:
        yield KeyAdmin(zone, keystore=keystore, table=table)


@click.group("keys")
def group() -> None:
    """Zone keys: create, rotate, rewrap, revoke, status, shred."""


@group.command("new-master-key")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    envvar="TRUSTZONES_MASTER_KEY_FILE",
    help="File to create (mode 0600; never overwritten).",
)
def new_master_key(out: Path) -> None:
    """Create a random master key file for the local keystore."""
    key = MasterKey.create_file(out)
    click.echo(f"master key {key.key_id} written to {out}")


@group.command("create")
@click.option("--zone", required=True, envvar="TRUSTZONES_ZONE", help="Zone name.")
@_store_options
def create(zone: str, **kw: Any) -> None:
    """Create a zone's KEK (version 1)."""
    with _admin(_opts(**kw), zone) as admin:
        status = admin.create()
    click.echo(f"zone {zone}: KEK version {status.latest} created ({status.backend})")


@group.command("rotate")
@click.option("--zone", required=True, envvar="TRUSTZONES_ZONE", help="Zone name.")
@click.option(
    "--rewrap/--no-rewrap",
    default=True,
    show_default=True,
    envvar="TRUSTZONES_KEYS_REWRAP",
    help="Rewrap stored keys under the new version now (data is never decrypted).",
)
@_store_options
def rotate(zone: str, rewrap: bool, **kw: Any) -> None:
    """Make a new KEK version; new data uses it at once."""
    with _admin(_opts(**kw), zone) as admin:
        version, report = admin.rotate(rewrap=rewrap)
    click.echo(f"zone {zone}: KEK version {version} is now active")
    if report is not None:
        click.echo(f"zone {zone}: {report.rewrapped} keys rewrapped, {report.failed} failed")
        if report.failed:
            raise KeystoreError(
                f"{report.failed} keys of zone {zone!r} could not be rewrapped (reasons are in "
                "the audit log); their data stays readable only while the old KEK version exists"
            )


@group.command("rewrap")
@click.option("--zone", required=True, envvar="TRUSTZONES_ZONE", help="Zone name.")
@_store_options
def rewrap(zone: str, **kw: Any) -> None:
    """Rewrap stored keys under the newest KEK version (resumable)."""
    with _admin(_opts(**kw), zone) as admin:
        report = admin.rewrap()
    click.echo(
        f"zone {zone}: {report.rewrapped} keys rewrapped to KEK version {report.kek_version}, "
        f"{report.failed} failed, {report.up_to_date} already current"
    )
    if report.failed:
        raise KeystoreError(f"{report.failed} keys of zone {zone!r} could not be rewrapped")


@group.command("revoke")
@click.option("--zone", required=True, envvar="TRUSTZONES_ZONE", help="Zone name.")
@click.option("--below", type=int, required=True, help="Destroy KEK versions older than this.")
@click.option(
    "--yes", is_flag=True, help="Do not ask for confirmation (no env variable: on purpose)."
)
@_store_options
def revoke(zone: str, below: int, yes: bool, **kw: Any) -> None:
    """Destroy old KEK versions; keys not rewrapped since become unreadable."""
    o = _opts(**kw)
    with _admin(o, zone) as admin:
        stale = admin.status().needs_rewrap
        if not yes:
            click.confirm(
                f"Destroy KEK versions < {below} of zone {zone}? {stale} stored keys are not "
                "rewrapped yet",
                abort=True,
            )
        admin.destroy_versions(below=below)
    click.echo(f"zone {zone}: KEK versions below {below} destroyed")


@group.command("status")
@click.option(
    "--zone", "zones", multiple=True, envvar="TRUSTZONES_ZONE", help="Zone(s); default all."
)
@click.option("--json", "as_json", is_flag=True, envvar="TRUSTZONES_JSON", help="JSON output.")
@_store_options
def status(zones: tuple[str, ...], as_json: bool, **kw: Any) -> None:
    """KEK versions, data keys per version, ages and encryption counts."""
    o = _opts(**kw)
    if not zones:
        with _open_keystore(o) as keystore:
            zones = tuple(keystore.zones())
    results = []
    for zone in zones:
        with _admin(o, zone) as admin:
            results.append(admin.status())
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    for r in results:
        versions = ", ".join(f"v{v.version} {v.state}" for v in r.kek.versions)
        by_version = ", ".join(f"v{k}: {n}" for k, n in sorted(r.deks_by_kek_version.items()))
        age = "-" if r.oldest_dek_age_s is None else f"{r.oldest_dek_age_s:.0f}s"
        click.echo(f"{r.zone} ({r.kek.backend})")
        click.echo(f"  KEK       {versions}")
        click.echo(f"  DEKs      {r.deks} ({by_version or 'none'}), oldest {age}")
        click.echo(f"  encrypted {r.encryptions} records (flushed counts)")
        click.echo(f"  subjects  {r.subject_keys} keys; {r.needs_rewrap} keys need rewrap")


@group.command("shred")
@click.option("--zone", required=True, envvar="TRUSTZONES_ZONE", help="Zone name.")
@click.option("--subject", required=True, help="Data subject id whose fields become unreadable.")
@click.option(
    "--yes", is_flag=True, help="Do not ask for confirmation (no env variable: on purpose)."
)
@_store_options
def shred(zone: str, subject: str, yes: bool, **kw: Any) -> None:
    """Crypto-shred a data subject: every field encrypted for it becomes unreadable."""
    if not yes:
        click.confirm(f"Irreversibly shred subject {subject!r} in zone {zone}?", abort=True)
    with _admin(_opts(**kw), zone) as admin:
        count = admin.shred(subject)
    click.echo(f"zone {zone}: subject shredded ({count} keys destroyed)")
