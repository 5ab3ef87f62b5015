"""The ``fedpipe`` command: demo, serve, tokens, node, and the node owner's plans, datasets, identity and peers commands."""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from fedpipe.researcher.demo import DemoOptions, run_demo

    options = DemoOptions(
        rounds=args.rounds,
        nodes=args.nodes,
        secagg=args.secagg or args.secagg_scheme is not None,
        secagg_scheme=args.secagg_scheme or "joye-libert",
        scaffold=args.scaffold,
        gpu=args.gpu,
        output=args.output,
        seed=args.seed,
        epochs=args.epochs,
    )
    return run_demo(options)


def _error(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _cmd_serve(args: argparse.Namespace) -> int:
    from fedpipe.server import serve

    if (args.certfile is None) != (args.keyfile is None):
        return _error("HTTPS needs both --certfile and --keyfile", 2)
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

    try:
        store = TokenStore(args.root)
    except (OSError, ValueError) as err:
        return _error(f"cannot open the credentials of {args.root}: {err}")
    try:
        if args.action == "list":
            for info in store.list():
                state = "revoked" if info.revoked else "active"
                print(f"{info.token_id}  {info.role:<10} {info.subject:<24} {state}")
            return 0
        if args.action == "revoke":
            if not args.id:
                return _error("`tokens revoke` needs --id", 2)
            if not store.revoke(args.id):
                return _error(f"no token {args.id!r}")
            print(f"revoked {args.id}")
            return 0
        if (args.node is None) == (args.researcher is None):
            return _error("`tokens issue` needs exactly one of --node ID and --researcher NAME", 2)
        role, subject = ("node", args.node) if args.node is not None else ("researcher", args.researcher)
        try:
            issued = store.issue(role, subject)
        except ValueError as err:
            return _error(str(err), 2)
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
    except (NodeLocked, NodeAdminError) as err:
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
    except (NodeLocked, NodeAdminError, ValueError) as err:
        return _error(str(err))
    except OSError as err:
        return _error(f"cannot start the node: {err}")


def _cmd_plans(args: argparse.Namespace) -> int:
    from fedpipe.bootstrap import NodeAdminError, open_owner
    from fedpipe.ports import Approval

    try:
        _existing_root(args.root)
        with open_owner(args.root, node_id=args.node_id) as owner:
            if args.action == "list":
                wanted = Approval(args.status) if args.status else None
                plans = owner.approvals.list(wanted)
                if not plans:
                    print("no training plans" + (f" with status {wanted.value}" if wanted else ""))
                for plan in plans:
                    origin = f"  from {plan.researcher_id}" if plan.researcher_id else ""
                    print(
                        f"{plan.plan_id}  {plan.status.value:<9} {plan.algorithm.value}:{plan.hash[:16]}…  "
                        f"{plan.name}{origin}"
                    )
                return 0
            if args.action == "show":
                if not args.id:
                    print("error: give the plan id with --id (see `fedpipe plans list`)", file=sys.stderr)
                    return 2
                record = owner.approvals.get(args.id)
                if record is None:
                    print(f"error: no training plan {args.id!r} (see `fedpipe plans list`)", file=sys.stderr)
                    return 1
                print(f"# {record.plan_id}  {record.status.value}  {record.algorithm.value}:{record.hash}")
                if record.researcher_id:
                    print(f"# requested by {record.researcher_id}")
                if record.description:
                    print(f"# {record.description}")
                print(owner.approvals.source_of(record.plan_id), end="")
                return 0
            status = {"approve": Approval.APPROVED, "reject": Approval.REJECTED, "pending": Approval.PENDING}[
                args.action
            ]
            if args.id is not None:
                if owner.approvals.get(args.id) is None:
                    print(f"error: no training plan {args.id!r} (see `fedpipe plans list`)", file=sys.stderr)
                    return 1
                record = owner.approvals.set_status(args.id, status)
                print(f"{record.plan_id}: {record.status.value} ({record.name})")
                return 0
            if args.file is None:
                print(
                    "error: give the plan with --id (a registered plan) or --file (a source file)",
                    file=sys.stderr,
                )
                return 2
            source = Path(args.file).read_text(encoding="utf-8")
            existing = owner.approvals.find(source)
            if existing is None:
                record = owner.approvals.register(
                    source, name=args.name or Path(args.file).stem, status=status
                )
            else:
                record = owner.approvals.set_status(existing.plan_id, status)
            print(f"{record.plan_id}: {record.status.value} ({record.name})")
    except (NodeAdminError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _existing_root(root: Path) -> None:
    """Refuse a node root that does not exist, instead of creating one by a typo."""
    from fedpipe.bootstrap import NodeAdminError

    if not Path(root).is_dir():
        raise NodeAdminError(f"no node directory at {root} (a node creates it on its first run)")


def _csv_shape(path: Path) -> tuple[int, int]:
    """Rows and columns of a CSV dataset as the round reads it; ValueError with a one-line reason."""
    from fedpipe.fedbiomed.compat.datasets import csv_shape
    from fedpipe.training import PlanError

    try:
        return csv_shape(path)
    except PlanError as err:
        raise ValueError(f"{path}: {err}") from err


def _cmd_datasets(args: argparse.Namespace) -> int:
    from fedpipe.bootstrap import NodeAdminError, open_owner
    from fedpipe.plan import DatasetRecord
    from fedpipe.request import freeze_mapping

    try:
        if args.action != "add":
            _existing_root(args.root)
        with open_owner(args.root, node_id=args.node_id) as owner:
            if args.action == "list":
                records = owner.datasets.list()
                if not records:
                    print("no datasets")
                for d in records:
                    listed = f"  tags={','.join(d.tags)}" if d.tags else ""
                    print(
                        f"{d.dataset_id}  {d.name}  {d.data_type or '-'}  {d.path}{listed}  {d.description}"
                    )
                return 0
            if args.action == "remove":
                if not args.id:
                    print("error: `datasets remove` needs --id", file=sys.stderr)
                    return 2
                owner.datasets.remove(args.id)
                print(f"removed dataset {args.id}")
                return 0
            if not args.id or not args.path:
                print("error: `datasets add` needs --id and --path", file=sys.stderr)
                return 2
            path = Path(args.path).resolve()
            if not path.exists():
                print(f"error: no file or folder at {args.path}", file=sys.stderr)
                return 1
            params = json.loads(args.parameters) if args.parameters else {}
            if not isinstance(params, dict):
                print(
                    'error: --parameters must be a JSON object, e.g. {"standardize": true}', file=sys.stderr
                )
                return 2
            data_type = args.data_type or ("csv" if path.suffix.lower() == ".csv" else "")
            shape: tuple[int, ...] = _csv_shape(path) if data_type == "csv" else ()
            tags = tuple(t.strip() for group in args.tags or () for t in group.split(",") if t.strip())
            record = owner.datasets.add(
                DatasetRecord(
                    dataset_id=args.id,
                    name=args.name or args.id,
                    path=str(path),
                    data_type=data_type,
                    shape=shape,
                    description=args.description,
                    tags=tags,
                    dataset_parameters=freeze_mapping(params),
                )
            )
            tag_text = f", tags {', '.join(record.tags)}" if record.tags else ""
            print(f"added dataset {record.dataset_id} ({record.path}{tag_text})")
    except (NodeAdminError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _cmd_identity(args: argparse.Namespace) -> int:
    from fedpipe.bootstrap import NodeAdminError, open_owner

    try:
        with open_owner(args.root, node_id=args.node_id) as owner:
            pem, fingerprint = owner.identity.public_pem(), owner.identity.fingerprint()
            node_id = owner.settings.node_id
        if args.out is not None:
            Path(args.out).write_bytes(pem)
            print(f"node {node_id}: identity key {fingerprint} written to {args.out}")
        else:
            print(f"node {node_id}: identity key {fingerprint}")
            print(pem.decode("ascii"), end="")
    except (NodeAdminError, OSError) as err:
        return _error(str(err))
    return 0


def _key_fingerprint(pem: bytes) -> str:
    """The fingerprint of a public-key PEM, or what is wrong with it."""
    from returns.result import Failure

    from fedpipe.secagg.identity import fingerprint, load_public_key

    key = load_public_key(pem)
    return key.failure().reason if isinstance(key, Failure) else fingerprint(key.unwrap())


def _cmd_peers(args: argparse.Namespace) -> int:
    from fedpipe.bootstrap import NodeAdminError, open_owner

    try:
        _existing_root(args.root)
        with open_owner(args.root) as owner:
            if args.action == "list":
                peers = owner.peers.list()
                if not peers:
                    print("no pinned peers")
                for peer in peers:
                    print(f"{peer.node_id}  {peer.fingerprint}  pinned {peer.date_added}")
                return 0
            if not args.node_id:
                return _error(f"`peers {args.action}` needs --node-id (the peer's node id)", 2)
            if args.action == "remove":
                if not owner.peers.remove(args.node_id):
                    return _error(f"no pinned peer {args.node_id!r} (see `fedpipe peers list`)")
                print(f"unpinned {args.node_id}")
                return 0
            if args.key is None:
                return _error(
                    "`peers add` needs --key FILE (the peer's public key, from `fedpipe identity`)", 2
                )
            pem = Path(args.key).read_bytes()
            if args.fingerprint is not None:
                found = _key_fingerprint(pem)
                if found != args.fingerprint:
                    return _error(f"the key in {args.key} is {found}, not {args.fingerprint}: not pinned")
            peer = owner.peers.add(args.node_id, pem)
            print(f"pinned {peer.node_id}: {peer.fingerprint}")
    except (NodeAdminError, OSError) as err:
        return _error(str(err))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command (each has ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="fedpipe", description="The node side of a federated-learning round."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run a real federated experiment on embedded defaults")
    demo.add_argument("--rounds", type=int, default=5, help="training rounds (default 5)")
    demo.add_argument("--nodes", type=int, default=3, help="node processes (default 3)")
    demo.add_argument("--epochs", type=int, default=2, help="local epochs per round (default 2)")
    demo.add_argument("--secagg", action="store_true", help="Joye-Libert secure aggregation end to end")
    demo.add_argument(
        "--secagg-scheme",
        choices=["joye-libert", "lom"],
        default=None,
        help="secure aggregation with this scheme (lom: the nodes agree their keys through the server, "
        "each checking the others' identity keys, which the demo pins as their owners would)",
    )
    demo.add_argument("--scaffold", action="store_true", help="SCAFFOLD instead of FedAvg")
    demo.add_argument("--gpu", action="store_true", help="let nodes train on a GPU when one is present")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data shards and model (default 0)")
    demo.add_argument("--output", type=Path, default=Path("demo-output"), help="where the plot and logs go")
    demo.set_defaults(run=_cmd_demo)

    serve = sub.add_parser("serve", help="run the file-exchange and task server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8844)
    serve.add_argument(
        "--root",
        type=Path,
        required=True,
        help="directory for uploaded files, the task board and credentials",
    )
    serve.add_argument("--max-bytes", type=int, default=8 * 1024**3, help="largest accepted upload")
    serve.add_argument(
        "--public-url", default=None, help="base of the download URLs (default: the listen URL)"
    )
    serve.add_argument("--certfile", type=Path, default=None, help="TLS certificate (PEM): serve HTTPS")
    serve.add_argument("--keyfile", type=Path, default=None, help="TLS private key (PEM) of --certfile")
    serve.set_defaults(run=_cmd_serve)

    tokens = sub.add_parser("tokens", help="server operator: issue, list or revoke credentials")
    tokens.add_argument("action", choices=["issue", "list", "revoke"])
    tokens.add_argument("--root", type=Path, required=True, help="the server's --root directory")
    tokens.add_argument("--node", default=None, help="issue a token for this node id")
    tokens.add_argument("--researcher", default=None, help="issue a token for this researcher")
    tokens.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the token to this file (mode 0600) instead of printing it",
    )
    tokens.add_argument("--id", default=None, help="the token id to revoke (see `tokens list`)")
    tokens.set_defaults(run=_cmd_tokens)

    node = sub.add_parser(
        "node", help="run a node that pulls train requests from a fedpipe server or a Fed-BioMed researcher"
    )
    node.add_argument("--server", default=None, help="fedpipe server URL, e.g. http://127.0.0.1:8844")
    node.add_argument(
        "--fedbiomed",
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
    node.add_argument("--node-name", default=None, help="--fedbiomed: the name the researcher sees")
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
        "--ca-file", type=Path, default=None, help="CA certificate (PEM) that signed an HTTPS server"
    )
    node.add_argument("--node-id", default=None, help="node id (stored in the root's settings on first run)")
    node.add_argument("--poll-wait", type=float, default=10.0, help="long-poll wait in seconds")
    node.set_defaults(run=_cmd_node)

    plans = sub.add_parser(
        "plans",
        help="node owner: list, review, approve or reject training plans",
        description="list: the registered plans (--status Pending: those awaiting review, e.g. sent "
        "by a researcher's approval request); show --id: a plan's source; approve/reject/pending "
        "--id ID or --file SOURCE: set a plan's status (a new file is registered).",
    )
    plans.add_argument("action", choices=["list", "show", "approve", "reject", "pending"])
    plans.add_argument("--root", type=Path, required=True, help="the node's directory")
    plans.add_argument("--node-id", default=None, help="the node's id (set on first use of the root)")
    plans.add_argument("--id", default=None, help="a registered plan's id (see `plans list`)")
    plans.add_argument("--file", type=Path, default=None, help="plan source file")
    plans.add_argument("--name", default=None, help="a name for the plan")
    plans.add_argument(
        "--status", default=None, choices=["Approved", "Rejected", "Pending"], help="list only these (list)"
    )
    plans.set_defaults(run=_cmd_plans)

    datasets = sub.add_parser("datasets", help="node owner: add, list or remove datasets")
    datasets.add_argument("action", choices=["add", "list", "remove"])
    datasets.add_argument("--root", type=Path, required=True, help="the node's directory")
    datasets.add_argument("--node-id", default=None, help="the node's id (set on first use of the root)")
    datasets.add_argument("--id", default=None, help="dataset id (add)")
    datasets.add_argument("--path", default=None, help="dataset file or folder (add)")
    datasets.add_argument("--name", default=None)
    datasets.add_argument("--description", default="")
    datasets.add_argument(
        "--parameters", default=None, help='dataset parameters as JSON, e.g. {"standardize": true}'
    )
    datasets.add_argument(
        "--tags",
        action="append",
        default=None,
        help="tags a researcher searches by, comma-separated or repeated (add), e.g. breast-cancer",
    )
    datasets.add_argument(
        "--data-type", default=None, help="the data type (default: csv for a .csv file; add)"
    )
    datasets.set_defaults(run=_cmd_datasets)

    identity = sub.add_parser(
        "identity",
        help="node owner: show this node's identity key (made on first use), to give to the owners of its peers",
    )
    identity.add_argument("--root", type=Path, required=True, help="the node's directory")
    identity.add_argument("--node-id", default=None, help="the node's id (set on first use of the root)")
    identity.add_argument("--out", type=Path, default=None, help="write the public key (PEM) to this file")
    identity.set_defaults(run=_cmd_identity)

    peers = sub.add_parser(
        "peers",
        help="node owner: pin, list or unpin the identity keys of peer nodes (LOM secure aggregation)",
        description="add --node-id ID --key FILE: pin the public key a peer's owner gave you (check its "
        "fingerprint with them, or pass --fingerprint); list: the pinned peers; remove --node-id ID: unpin.",
    )
    peers.add_argument("action", choices=["add", "list", "remove"])
    peers.add_argument("--root", type=Path, required=True, help="the node's directory")
    peers.add_argument("--node-id", default=None, help="the peer's node id (add, remove)")
    peers.add_argument("--key", type=Path, default=None, help="the peer's public key, PEM (add)")
    peers.add_argument(
        "--fingerprint",
        default=None,
        metavar="SHA256:HEX",
        help="pin only if the key has this fingerprint (add)",
    )
    peers.set_defaults(run=_cmd_peers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedpipe`` command."""
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
