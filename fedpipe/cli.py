"""The ``fedpipe`` command: demo, run, simulate, serve, tokens, node, and the owner's plans, datasets, identity, peers.

Every user error is one line on stderr (``error: ...``) and exit status 2, argparse's own errors
included, and is found before anything starts or any file is written; only a bug prints a
traceback. Each command and sub-command has its own ``--help``, every option its help and
default. The owner commands share ``--root`` and ``--node-id``: the first command that needs a
node root creates it with its id, a later one with another ``--node-id`` is refused, and the
listing commands never create anything. ``run`` (the researcher's experiment) and ``simulate``
(the same on virtual nodes) come from ``fedpipe.researcher.run_cli`` and ``fedpipe.simulation.cli``,
imported only when the command line may ask for them (they load torch).
"""

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from fedpipe.argtypes import host_port, http_url, json_object, port_number, positive_float, positive_int

if TYPE_CHECKING:
    from fedpipe.adapters.sqlite.approvals import PlanRecord
    from fedpipe.bootstrap import Node

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2
"""The exit status of every user error (argparse's convention); 1 is for a command that could not
finish for a reason outside the invocation (a node root another process holds, say)."""


class CommandError(Exception):
    """A user error of a command: its message is printed as one ``error:`` line, exit status 2."""


def _error(message: str, code: int = EXIT_USAGE) -> int:
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: <prog>: <message>`` on one line and exit 2."""
        text = " ".join(message.split())
        self.exit(EXIT_USAGE, f"error: {self.prog}: {text} (see `{self.prog} --help`)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help, unless the help says it already or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        shown = default is not None and default is not False and default is not argparse.SUPPRESS
        if shown and "%(default)" not in text and "default:" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


# --- demo, serve, tokens, node --------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        return _error(f"--output {output} is a file, not a folder")
    secagg = args.secagg or args.secagg_scheme is not None
    if secagg and args.nodes < 2:
        return _error("secure aggregation needs at least 2 nodes (--nodes 2 or more)")

    from fedpipe.researcher.demo import DemoOptions, run_demo  # the training stack: after the checks

    options = DemoOptions(
        rounds=args.rounds,
        nodes=args.nodes,
        secagg=secagg,
        secagg_scheme=args.secagg_scheme or "joye-libert",
        scaffold=args.scaffold,
        gpu=args.gpu,
        output=output,
        seed=args.seed,
        epochs=args.epochs,
    )
    return run_demo(options)


def _usable_folder(path: Path, what: str) -> None:
    """Make ``path`` (a folder the command writes in), or say in one line why it cannot be."""
    if path.exists() and not path.is_dir():
        raise CommandError(f"{what} {path} is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CommandError(f"cannot create {what} {path}: {err.strerror or err}") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise CommandError(f"{what} {path} is not writable")


def _cmd_serve(args: argparse.Namespace) -> int:
    from fedpipe.server import serve

    if (args.certfile is None) != (args.keyfile is None):
        return _error("HTTPS needs both --certfile and --keyfile")
    for tls_file in (args.certfile, args.keyfile):
        if tls_file is not None and not Path(tls_file).is_file():
            return _error(f"no file at {tls_file}")
    _usable_folder(Path(args.root), "--root")
    serve(
        host=args.host,
        port=args.port,
        root=args.root,
        max_bytes=args.max_bytes,
        public_url=args.public_url,
        certfile=args.certfile,
        keyfile=args.keyfile,
    )
    return 0


def _cmd_tokens(args: argparse.Namespace) -> int:
    from fedpipe.adapters.private_file import write_private
    from fedpipe.server.auth import TokenStore
    from fedpipe.server.board_db import BOARD_FILE

    if args.action != "issue" and not (Path(args.root) / BOARD_FILE).is_file():
        return _error(
            f"no server credentials in {args.root} (`fedpipe serve --root` or `fedpipe tokens issue` creates them)"
        )
    if args.action == "revoke" and not (args.ref or args.id):
        return _error("`tokens revoke` needs the token id (see `fedpipe tokens list`)")
    if args.action == "issue" and (args.node is None) == (args.researcher is None):
        return _error("`tokens issue` needs exactly one of --node ID and --researcher NAME")
    try:
        store = TokenStore(args.root)
    except (OSError, ValueError) as err:
        return _error(f"cannot open the credentials of {args.root}: {err}")
    try:
        if args.action == "list":
            infos = store.list()
            if not infos:
                print("no tokens")
            for info in infos:
                state = "revoked" if info.revoked else "active"
                print(f"{info.token_id}  {info.role:<10} {info.subject:<24} {state}")
            return 0
        if args.action == "revoke":
            token_id = _one_ref(args, "token id")
            if not store.revoke(token_id):
                return _error(f"no token {token_id!r} (see `fedpipe tokens list`)")
            print(f"revoked {token_id}")
            return 0
        role, subject = ("node", args.node) if args.node is not None else ("researcher", args.researcher)
        try:
            issued = store.issue(role, subject)
        except ValueError as err:
            return _error(str(err))
        if args.out is None:
            print(issued.token)
        else:
            try:
                write_private(args.out, issued.token)
            except OSError as err:
                store.revoke(issued.token_id)  # never leave a live token nobody holds
                return _error(f"cannot write {args.out}: {err}")
            print(f"{role} token {issued.token_id} for {subject} written to {args.out}")
        return 0
    finally:
        store.close()


def _cmd_node(args: argparse.Namespace) -> int:
    import logging

    from fedpipe.adapters.lock import NodeLocked
    from fedpipe.bootstrap import NodeAdminError, read_token_file, run_node_agent

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if (args.server is None) == (args.fedbiomed is None):
        return _error(
            "give either --server URL (a fedpipe server) or --fedbiomed HOST:PORT (a Fed-BioMed researcher)"
        )
    if args.fedbiomed is not None:
        return _fedbiomed_node(args)
    if args.token_file is None:
        return _error("--server needs --token-file (issue one with `fedpipe tokens issue --node ID`)")
    try:
        token = read_token_file(args.token_file)
        return run_node_agent(
            args.root,
            server_url=args.server,
            node_id=args.node_id,
            token=token,
            ca_file=args.ca_file,
            poll_wait=args.poll_wait,
        )
    except NodeLocked as err:  # not a bad invocation: the root is busy now (status 1)
        return _error(str(err), 1)
    except NodeAdminError as err:
        return _error(str(err))
    except OSError as err:  # an unreadable --ca-file, say (ssl.SSLError is an OSError too)
        return _error(f"cannot start the node: {err}")


def _fedbiomed_node(args: argparse.Namespace) -> int:
    from fedpipe.adapters.lock import NodeLocked
    from fedpipe.bootstrap import NodeAdminError

    try:
        from fedpipe.fedbiomed.node import parse_address, run_fedbiomed_node
    except ImportError as err:
        return _error(
            f"the Fed-BioMed transport needs the `fedbiomed` extra (pip install 'fedpipe[fedbiomed]'): {err}"
        )
    try:
        parse_address(args.fedbiomed)
        return run_fedbiomed_node(
            args.root,
            address=args.fedbiomed,
            node_id=args.node_id,
            node_name=args.node_name,
            certificate_file=args.researcher_certificate,
            fingerprint=args.researcher_fingerprint,
            insecure_validation=not args.no_secagg_validation,
        )
    except NodeLocked as err:
        return _error(str(err), 1)
    except (NodeAdminError, ValueError) as err:
        return _error(str(err))
    except OSError as err:
        return _error(f"cannot start the node: {err}")


# --- the node owner's commands ---------------------------------------------------------------------


def _one_ref(args: argparse.Namespace, what: str) -> str:
    """The id given positionally or with ``--id`` (the older spelling); CommandError when none or both differ."""
    given = [ref for ref in (args.ref, args.id) if ref]
    if not given:
        raise CommandError(f"`{args.prog_name}` needs the {what}")
    if len(set(given)) > 1:
        raise CommandError(f"two different ids given: {given[0]!r} and --id {given[1]!r}")
    return str(given[0])


def _owner(args: argparse.Namespace, *, create: bool) -> "Node":
    """The owner's session on ``--root`` (a ``Node``): created with ``--node-id`` when ``create``, else
    only when the root already is a node root (listing and editing never make one)."""
    from fedpipe.bootstrap import SETTINGS_FILE, open_owner

    root = Path(args.root)
    new = not (root / SETTINGS_FILE).is_file()
    if new and not create:
        what = "no node root" if not root.exists() else "not a node root (no settings.json)"
        raise CommandError(
            f"{what} at {root}: check --root (`fedpipe datasets add` or `fedpipe node` creates one)"
        )
    owner = open_owner(root, node_id=args.node_id)
    if new:
        chosen = "" if args.node_id else " (a new id: choose one with --node-id on first use)"
        print(f"created node root {root} for node {owner.settings.node_id!r}{chosen}")
    return owner


def _plan_file(path: Path) -> str:
    """A plan source read from ``path`` and checked to parse, before any root is touched."""
    from returns.result import Failure

    from fedpipe.approval import canonical_source

    try:
        source = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CommandError(
            f"cannot read the plan file {path}: {getattr(err, 'strerror', None) or err}"
        ) from err
    parsed = canonical_source(source)
    if isinstance(parsed, Failure):
        fault = parsed.failure()
        where = f" at line {fault.line}" if fault.line else ""
        raise CommandError(f"{path} is not valid Python ({fault.message}{where})")
    return source


def _print_plan(record: "PlanRecord") -> None:
    origin = f"  from {record.researcher_id}" if record.researcher_id else ""
    print(
        f"{record.plan_id}  {record.status.value:<9} {record.digest_text(short=True)}  {record.name}{origin}"
    )


def _plans_list(args: argparse.Namespace) -> int:
    from fedpipe.ports import Approval

    wanted = Approval.PENDING if args.pending else Approval(args.status) if args.status else None
    with _owner(args, create=False) as owner:
        plans = owner.approvals.list(wanted)
    if not plans:
        print("no training plans" + (f" with status {wanted.value}" if wanted else ""))
    for plan in plans:
        _print_plan(plan)
    return 0


def _plan_record(owner: "Node", ref: str, hint: str = "") -> "PlanRecord":
    """The owner's plan record for an id or digest ``ref``; a one-line error when there is none."""
    record = owner.approvals.get(ref)
    if record is None:
        raise CommandError(f"no training plan {ref!r} (see `fedpipe plans list`{hint})")
    return record


def _plans_show(args: argparse.Namespace) -> int:
    ref = _one_ref(args, "plan id (see `fedpipe plans list`)")
    with _owner(args, create=False) as owner:
        record = _plan_record(owner, ref)
        source = owner.approvals.source_of(record.plan_id)
    print(f"# {record.plan_id}  {record.status.value}  {record.digest_text()}")
    print(f"# name: {record.name}")
    if record.researcher_id:
        print(f"# requested by {record.researcher_id}")
    if record.description:
        print(f"# {record.description}")
    print(f"# registered {record.date_registered}, last changed {record.date_last_action}")
    print(source, end="" if source.endswith("\n") else "\n")
    return 0


def _plans_set(args: argparse.Namespace) -> int:
    """approve, reject, register (pending): by id, or by source file (registered when new)."""
    from fedpipe.ports import Approval

    status = {"approve": Approval.APPROVED, "reject": Approval.REJECTED, "register": Approval.PENDING}[
        args.action
    ]
    refs = [ref for ref in (args.ref, args.id) if ref]
    if args.action == "register" and args.ref:  # `plans register FILE`: the positional is a file
        if args.file is not None and Path(args.file) != Path(args.ref):
            raise CommandError(f"two different files given: {args.ref} and --file {args.file}")
        args.file, refs, args.ref = Path(args.ref), [r for r in (args.id,) if r], None
    if args.file is not None and refs:
        raise CommandError("give the plan by id or by --file, not both")
    if args.file is None:
        ref = _one_ref(args, "plan id (see `fedpipe plans list`) or --file SOURCE")
        with _owner(args, create=False) as owner:
            _plan_record(owner, ref, f"; a source file goes with --file {ref}" if Path(ref).is_file() else "")
            record = owner.approvals.set_status(ref, status)
    else:
        source = _plan_file(args.file)
        with _owner(args, create=True) as owner:
            existing = owner.approvals.find(source)
            if existing is None:
                record = owner.approvals.register(
                    source, name=args.name or Path(args.file).stem, status=status
                )
            else:
                record = owner.approvals.set_status(existing.plan_id, status)
    print(f"{record.plan_id}: {record.status.value} ({record.name}, {record.digest_text(short=True)})")
    return 0


def _plans_remove(args: argparse.Namespace) -> int:
    ref = _one_ref(args, "plan id (see `fedpipe plans list`)")
    with _owner(args, create=False) as owner:
        record = _plan_record(owner, ref)
        owner.approvals.remove(record.plan_id)
    print(f"removed training plan {record.plan_id} ({record.name})")
    return 0


def _dataset_file(path_text: str, data_type: str | None) -> tuple[Path, str, tuple[int, ...]]:
    """The dataset's resolved path, data type and shape, checked as the round will read it."""
    from fedpipe.fedbiomed.compat.datasets import csv_shape
    from fedpipe.training import PlanError

    path = Path(path_text).expanduser()
    if not path.exists():
        raise CommandError(f"no file or folder at {path_text}")
    path = path.resolve()
    kind = data_type or ("csv" if path.suffix.lower() == ".csv" else "")
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise CommandError(f"{path_text} is not readable by this user")
    if kind != "csv":
        return path, kind, ()
    try:
        return path, kind, csv_shape(path)
    except PlanError as err:
        raise CommandError(f"{path_text} cannot be read as CSV: {err}") from err


def _datasets_add(args: argparse.Namespace) -> int:
    from fedpipe.plan import DatasetRecord
    from fedpipe.request import freeze_mapping

    path, data_type, shape = _dataset_file(args.path, args.data_type)
    tags = tuple(t.strip() for group in args.tags or () for t in group.split(",") if t.strip())
    with _owner(args, create=True) as owner:
        record = owner.datasets.add(
            DatasetRecord(
                dataset_id=args.id,
                name=args.name or args.id,
                path=str(path),
                data_type=data_type,
                shape=shape,
                description=args.description,
                tags=tags,
                dataset_parameters=freeze_mapping(args.parameters or {}),
            )
        )
    size = f"{shape[0]} rows x {shape[1]} columns" if len(shape) == 2 else "shape not checked"
    tag_text = f", tags {', '.join(record.tags)}" if record.tags else ""
    print(f"added dataset {record.dataset_id}: {data_type or 'untyped'}, {size} ({record.path}{tag_text})")
    return 0


def _datasets_list(args: argparse.Namespace) -> int:
    with _owner(args, create=False) as owner:
        records = owner.datasets.list()
    if not records:
        print("no datasets")
    for d in records:
        size = " x ".join(str(n) for n in d.shape) or "-"
        tags = f"  tags={','.join(d.tags)}" if d.tags else ""
        print(
            f"{d.dataset_id}  {d.name}  {d.data_type or '-'}  {size}  {d.path}{tags}  {d.description}".rstrip()
        )
    return 0


def _datasets_remove(args: argparse.Namespace) -> int:
    dataset_id = _one_ref(args, "dataset id (see `fedpipe datasets list`)")
    with _owner(args, create=False) as owner:
        owner.datasets.remove(dataset_id)
    print(f"removed dataset {dataset_id} (its files are left as they are)")
    return 0


def _cmd_identity(args: argparse.Namespace) -> int:
    if args.out is not None and Path(args.out).is_dir():
        return _error(f"--out {args.out} is a folder: give a file name")
    with _owner(args, create=True) as owner:
        pem, fingerprint = owner.identity.public_pem(), owner.identity.fingerprint()
        node_id = owner.settings.node_id
    if args.out is not None:
        try:
            Path(args.out).write_bytes(pem)
        except OSError as err:
            return _error(f"cannot write {args.out}: {err.strerror or err}")
        print(f"node {node_id}: identity key {fingerprint} written to {args.out}")
    else:
        print(f"node {node_id}: identity key {fingerprint}")
        print(pem.decode("ascii"), end="")
    return 0


def _key_fingerprint(pem: bytes) -> str:
    """The fingerprint of a public-key PEM, or what is wrong with it."""
    from returns.result import Failure

    from fedpipe.secagg.identity import fingerprint, load_public_key

    key = load_public_key(pem)
    return key.failure().reason if isinstance(key, Failure) else fingerprint(key.unwrap())


def _peer_id(args: argparse.Namespace) -> str:
    given = [p for p in (args.ref, args.peer) if p]
    if not given:
        raise CommandError(
            f"`fedpipe peers {args.action}` needs the peer's node id: `fedpipe peers {args.action} PEER_ID ...` "
            "(--node-id is this node's own id)"
        )
    if len(set(given)) > 1:
        raise CommandError(f"two different peers given: {given[0]!r} and --peer {given[1]!r}")
    return str(given[0])


def _peers_list(args: argparse.Namespace) -> int:
    with _owner(args, create=False) as owner:
        peers = owner.peers.list()
    if not peers:
        print("no pinned peers")
    for peer in peers:
        print(f"{peer.node_id}  {peer.fingerprint}  pinned {peer.date_added}")
    return 0


def _peers_add(args: argparse.Namespace) -> int:
    peer_id = _peer_id(args)
    try:
        pem = Path(args.key).read_bytes()
    except OSError as err:
        return _error(f"cannot read the key file {args.key}: {err.strerror or err}")
    found = _key_fingerprint(pem)
    if not found.startswith("SHA256:"):
        return _error(f"{args.key} holds no usable public key: {found}")
    if args.fingerprint is not None and found != args.fingerprint:
        return _error(f"the key in {args.key} is {found}, not {args.fingerprint}: not pinned")
    with _owner(args, create=True) as owner:
        peer = owner.peers.add(peer_id, pem)
    print(f"pinned {peer.node_id}: {peer.fingerprint}")
    return 0


def _peers_remove(args: argparse.Namespace) -> int:
    peer_id = _peer_id(args)
    with _owner(args, create=False) as owner:
        removed = owner.peers.remove(peer_id)
    if not removed:
        return _error(f"no pinned peer {peer_id!r} (see `fedpipe peers list`)")
    print(f"unpinned {peer_id}")
    return 0


def _owner_command(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``run`` with the owner's refusals (NodeAdminError, CommandError, file errors) as one-line errors."""

    def guarded(args: argparse.Namespace) -> int:
        from fedpipe.bootstrap import NodeAdminError

        try:
            return run(args)
        except (CommandError, NodeAdminError) as err:
            return _error(str(err))
        except OSError as err:
            return _error(f"{err.strerror or err}" + (f": {err.filename}" if err.filename else ""))

    return guarded


# --- the parser --------------------------------------------------------------------------------------


def _add(
    sub: "argparse._SubParsersAction[_Parser]",
    name: str,
    help_text: str,
    *,
    description: str | None = None,
    parents: Sequence[_Parser] = (),
    aliases: Sequence[str] = (),
) -> _Parser:
    """A sub-command parser with its own help (``help_text`` in the list, ``description`` on its page)."""
    return sub.add_parser(
        name,
        help=help_text,
        description=description or help_text[:1].upper() + help_text[1:] + ".",
        parents=list(parents),
        aliases=list(aliases),
        formatter_class=_HelpFormatter,
    )


def _owner_options() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--root",
        type=Path,
        required=True,
        help="the node's directory (settings, database, keys); the first command that needs it creates it",
    )
    common.add_argument(
        "--node-id",
        default=None,
        help="this node's id: names a root on its creation, and must match an existing root's "
        "(default: the root's id; a new random id for a new root)",
    )
    return common


def _ref_options(parser: _Parser, what: str) -> None:
    parser.add_argument("ref", nargs="?", default=None, metavar="ID", help=what)
    parser.add_argument("--id", default=None, help="the same as ID (the older spelling)")


def _add_demo(sub: "argparse._SubParsersAction[_Parser]") -> None:
    demo = _add(
        sub, "demo", "run a real federated experiment on embedded defaults (server, nodes, researcher)"
    )
    demo.add_argument("--rounds", type=positive_int, default=5, help="training rounds")
    demo.add_argument("--nodes", type=positive_int, default=3, help="node processes")
    demo.add_argument("--epochs", type=positive_int, default=2, help="local epochs per round")
    demo.add_argument("--secagg", action="store_true", help="Joye-Libert secure aggregation end to end")
    demo.add_argument(
        "--secagg-scheme",
        choices=["joye-libert", "lom"],
        default=None,
        help="secure aggregation with this scheme (lom: the nodes agree their keys through the server, "
        "each checking the others' identity keys, which the demo pins as their owners would; default: "
        "joye-libert with --secagg, else none)",
    )
    demo.add_argument("--scaffold", action="store_true", help="SCAFFOLD instead of FedAvg")
    demo.add_argument("--gpu", action="store_true", help="let nodes train on a GPU when one is present")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data shards and model")
    demo.add_argument("--output", type=Path, default=Path("demo-output"), help="where the plot and logs go")
    demo.set_defaults(run=_cmd_demo)


def _add_serve(sub: "argparse._SubParsersAction[_Parser]") -> None:
    serve = _add(sub, "serve", "run the file-exchange and task server")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=port_number, default=8844, help="TCP port to listen on")
    serve.add_argument(
        "--root",
        type=Path,
        required=True,
        help="directory for uploaded files, the task board and credentials",
    )
    serve.add_argument(
        "--max-bytes", type=positive_int, default=8 * 1024**3, help="largest accepted upload, bytes"
    )
    serve.add_argument(
        "--public-url",
        type=http_url,
        default=None,
        help="base of the download URLs (default: the listen URL)",
    )
    serve.add_argument(
        "--certfile", type=Path, default=None, help="TLS certificate (PEM): serve HTTPS (default: plain HTTP)"
    )
    serve.add_argument("--keyfile", type=Path, default=None, help="TLS private key (PEM) of --certfile")
    serve.set_defaults(run=_owner_command(_cmd_serve))


def _add_tokens(sub: "argparse._SubParsersAction[_Parser]") -> None:
    tokens = _add(sub, "tokens", "server operator: issue, list or revoke credentials")
    actions = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = _Parser(add_help=False)
    common.add_argument("--root", type=Path, required=True, help="the server's --root directory")
    issue = _add(actions, "issue", "issue a token for one node or one researcher", parents=[common])
    issue.add_argument("--node", default=None, help="issue a token for this node id")
    issue.add_argument("--researcher", default=None, help="issue a token for this researcher")
    issue.add_argument(
        "--out", type=Path, default=None, help="write the token to this file (mode 0600) (default: print it)"
    )
    _add(actions, "list", "list the tokens (ids, roles, subjects; never the secrets)", parents=[common])
    revoke = _add(actions, "revoke", "revoke a token by its id", parents=[common])
    _ref_options(revoke, "the token id (see `fedpipe tokens list`)")
    tokens.set_defaults(run=_owner_command(_cmd_tokens), ref=None, id=None)


def _add_node(sub: "argparse._SubParsersAction[_Parser]") -> None:
    node = _add(
        sub, "node", "run a node that pulls train requests from a fedpipe server or a Fed-BioMed researcher"
    )
    node.add_argument(
        "--server", type=http_url, default=None, help="fedpipe server URL, e.g. http://127.0.0.1:8844"
    )
    node.add_argument(
        "--fedbiomed",
        type=host_port,
        default=None,
        metavar="HOST:PORT",
        help="a Fed-BioMed 6.x researcher to dial over gRPC (HOST: the name its certificate was made for)",
    )
    node.add_argument(
        "--researcher-certificate",
        type=Path,
        default=None,
        help="--fedbiomed: the researcher's certificate (PEM) to pin",
    )
    node.add_argument(
        "--researcher-fingerprint",
        default=None,
        metavar="SHA256:HEX",
        help="--fedbiomed: confirm the served certificate by its fingerprint once; it is then pinned",
    )
    node.add_argument(
        "--node-name", default=None, help="--fedbiomed: the name the researcher sees (default: the node id)"
    )
    node.add_argument(
        "--no-secagg-validation",
        action="store_true",
        help="--fedbiomed: do not send the secure-aggregation validation factor (it reveals the first "
        "encrypted values of the update to the researcher; a researcher that validates then refuses the round)",
    )
    node.add_argument(
        "--root", type=Path, required=True, help="the node's directory (settings, database, workspaces)"
    )
    node.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="--server: file holding this node's token (`fedpipe tokens issue`)",
    )
    node.add_argument(
        "--ca-file",
        type=Path,
        default=None,
        help="CA certificate (PEM) that signed an HTTPS server (default: the system's CAs)",
    )
    node.add_argument(
        "--node-id",
        default=None,
        help="node id: names a new root, must match an existing root's (default: the root's id)",
    )
    node.add_argument("--poll-wait", type=positive_float, default=10.0, help="long-poll wait in seconds")
    node.set_defaults(run=_cmd_node)


def _add_plans(sub: "argparse._SubParsersAction[_Parser]", common: _Parser) -> None:
    plans = _add(
        sub,
        "plans",
        "node owner: list, review, approve or reject training plans",
        description="The node owner's training plans. A plan a round refused because it was unknown is "
        "recorded as pending, with its source: `plans list --pending` lists them, `plans show ID` prints "
        "one, `plans approve ID` or `plans reject ID` decides. A plan is named by its id, its name or "
        "its digest (SHA256:<hex>, as `plans list` shows it).",
    )
    actions = plans.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = _add(actions, "list", "list the registered plans: id, status, digest, name", parents=[common])
    listing.add_argument(
        "--status", default=None, choices=["Approved", "Rejected", "Pending"], help="list only these"
    )
    listing.add_argument("--pending", action="store_true", help="list only the plans awaiting review")
    listing.set_defaults(run=_owner_command(_plans_list))
    show = _add(actions, "show", "print a plan's record (full digest) and its source", parents=[common])
    _ref_options(show, "the plan's id, name or digest (see `fedpipe plans list`)")
    show.set_defaults(run=_owner_command(_plans_show))
    for name, verb in (("approve", "approve"), ("reject", "reject")):
        decide = _add(
            actions,
            name,
            f"{verb} a plan: a registered one by ID, or a source file (registered when new)",
            parents=[common],
        )
        _ref_options(decide, "the plan's id, name or digest (see `fedpipe plans list`)")
        decide.add_argument("--file", type=Path, default=None, help="a plan source file, instead of ID")
        decide.add_argument(
            "--name", default=None, help="name of a newly registered --file (default: its stem)"
        )
        decide.set_defaults(run=_owner_command(_plans_set), action=name)
    register = _add(
        actions,
        "register",
        "register a plan file as pending (awaiting review), or put a registered plan back to pending",
        parents=[common],
        aliases=["pending"],
    )
    register.add_argument(
        "ref", nargs="?", default=None, metavar="FILE", help="the plan source file to register"
    )
    register.add_argument("--file", type=Path, default=None, help="the same as FILE")
    register.add_argument(
        "--id", default=None, help="a registered plan's id, name or digest, to put back to pending instead"
    )
    register.add_argument(
        "--name", default=None, help="name of the registered plan (default: the file's stem)"
    )
    register.set_defaults(run=_owner_command(_plans_set), action="register")
    remove = _add(actions, "remove", "delete a plan's record", parents=[common])
    _ref_options(remove, "the plan's id, name or digest")
    remove.set_defaults(run=_owner_command(_plans_remove))


def _add_datasets(sub: "argparse._SubParsersAction[_Parser]", common: _Parser) -> None:
    datasets = _add(sub, "datasets", "node owner: add, list or remove datasets")
    actions = datasets.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = _add(
        actions,
        "add",
        "register a dataset file, checked as a round will read it (a CSV: its rows and columns)",
        parents=[common],
    )
    add.add_argument("--id", required=True, help="the dataset id researchers ask for")
    add.add_argument("--path", required=True, help="dataset file or folder")
    add.add_argument("--name", default=None, help="a name (default: the id)")
    add.add_argument("--description", default="", help="a description researchers see")
    add.add_argument(
        "--parameters",
        type=json_object,
        default=None,
        help='dataset parameters as a JSON object, e.g. {"standardize": true} (default: none)',
    )
    add.add_argument(
        "--tags",
        action="append",
        default=None,
        help="tags a researcher searches by, comma-separated or repeated, e.g. breast-cancer (default: none)",
    )
    add.add_argument("--data-type", default=None, help="the data type (default: csv for a .csv file)")
    add.set_defaults(run=_owner_command(_datasets_add))
    listing = _add(actions, "list", "list the registered datasets", parents=[common])
    listing.set_defaults(run=_owner_command(_datasets_list))
    remove = _add(actions, "remove", "unregister a dataset (its files are left alone)", parents=[common])
    _ref_options(remove, "the dataset id (see `fedpipe datasets list`)")
    remove.set_defaults(run=_owner_command(_datasets_remove))


def _add_identity(sub: "argparse._SubParsersAction[_Parser]", common: _Parser) -> None:
    identity = _add(
        sub,
        "identity",
        "node owner: show this node's identity key (made on first use), to give to the owners of its peers",
        parents=[common],
    )
    identity.add_argument(
        "--out", type=Path, default=None, help="write the public key (PEM) to this file (default: print it)"
    )
    identity.set_defaults(run=_owner_command(_cmd_identity))


def _add_peers(sub: "argparse._SubParsersAction[_Parser]", common: _Parser) -> None:
    peers = _add(
        sub,
        "peers",
        "node owner: pin, list or unpin the identity keys of peer nodes (LOM secure aggregation)",
        description="The identity keys of peer nodes this node trusts for LOM key agreement. add PEER_ID "
        "--key FILE: pin the public key a peer's owner gave you (check its fingerprint with them, or pass "
        "--fingerprint); list: the pinned peers; remove PEER_ID: unpin. --node-id is this node's id.",
    )
    actions = peers.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = _add(actions, "add", "pin a peer's public key", parents=[common])
    add.add_argument("ref", nargs="?", default=None, metavar="PEER_ID", help="the peer's node id")
    add.add_argument("--peer", default=None, help="the same as PEER_ID")
    add.add_argument(
        "--key", type=Path, required=True, help="the peer's public key, PEM (from `fedpipe identity` there)"
    )
    add.add_argument(
        "--fingerprint",
        default=None,
        metavar="SHA256:HEX",
        help="pin only if the key has this fingerprint (default: pin what the file holds)",
    )
    add.set_defaults(run=_owner_command(_peers_add))
    listing = _add(actions, "list", "list the pinned peers", parents=[common])
    listing.set_defaults(run=_owner_command(_peers_list))
    remove = _add(actions, "remove", "unpin a peer", parents=[common])
    remove.add_argument("ref", nargs="?", default=None, metavar="PEER_ID", help="the peer's node id")
    remove.add_argument("--peer", default=None, help="the same as PEER_ID")
    remove.set_defaults(run=_owner_command(_peers_remove))


_OWN_COMMANDS = frozenset({"demo", "serve", "tokens", "node", "plans", "datasets", "identity", "peers"})
"""The commands this module defines; ``run`` comes from ``fedpipe.researcher.run_cli``."""


def build_parser(*, with_run: bool = True) -> argparse.ArgumentParser:
    """The argument parser of every command (each command and sub-command has ``--help``).

    ``with_run=False`` leaves out ``run``, whose module loads the researcher's training stack
    (torch): ``main`` does so for the other commands, which then start in a fraction of the time.
    """
    parser = _Parser(
        prog="fedpipe",
        description="Federated learning: the node side of a round, a reference server, a demo.",
        formatter_class=_HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if with_run:  # the researcher's commands import torch: only when one of them may be asked for
        from fedpipe.researcher.run_cli import add_run_parser
        from fedpipe.simulation.cli import add_simulate_parser

        add_run_parser(sub)
        add_simulate_parser(sub)
    common = _owner_options()
    _add_demo(sub)
    _add_serve(sub)
    _add_tokens(sub)
    _add_node(sub)
    _add_plans(sub, common)
    _add_datasets(sub, common)
    _add_identity(sub, common)
    _add_peers(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedpipe`` command: the command's exit status (2 for a user error)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in arguments if not a.startswith("-")), None)
    args = build_parser(with_run=command not in _OWN_COMMANDS).parse_args(arguments)
    args.prog_name = f"fedpipe {args.command}" + (f" {args.action}" if getattr(args, "action", None) else "")
    try:
        code: int = args.run(args)
    except CommandError as err:
        return _error(str(err))
    return code


if __name__ == "__main__":
    sys.exit(main())
