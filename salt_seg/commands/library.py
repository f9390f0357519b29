"""``salt-seg library``: keep several adapters of one base in a folder and use them by name.

``add RUN|ADAPTER --name NAME``, ``list``, ``remove NAME`` and ``compress`` (a joint-SVD analysis of how far the
adapters' weight updates share a basis). ``salt-seg predict --model NAME`` then loads an entry. Heavy imports
happen inside :func:`run`.
"""

from __future__ import annotations

import argparse

HELP = "an adapter library: add/list/remove adapters of one base, use them as predict --model NAME; compress"
DESCRIPTION = (
    "A folder (default $SALT_SEG_LIBRARY or ~/.salt_seg/library) of adapters trained on the same base weights, "
    "checked by the base's content hash: the first adapter fixes the base, another base's adapter is refused. "
    "'salt-seg predict --model NAME' loads an entry; the viewer lists them and switches without reloading the "
    "base. 'compress' stacks the entries' weight updates per layer, takes one joint SVD with a shared basis U "
    "per layer (Sub-MoE's Experts Union Decomposition), and reports size against reconstruction error and output "
    "difference per adapter over the shared rank."
)


def _add_library_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--library",
        default=None,
        metavar="DIR",
        help="library folder (default $SALT_SEG_LIBRARY or ~/.salt_seg/library)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("add", help="copy a run's (or an adapter file's) adapter into the library")
    p.add_argument("source", metavar="RUN|ADAPTER", help="trained run directory or adapter .safetensors file")
    p.add_argument("--name", required=True, help="entry name (letters, digits, '.', '_', '-')")
    p.add_argument("--force", action="store_true", help="replace an entry of that name")
    _add_library_flag(p)
    p = sub.add_parser("list", help="the library's entries")
    _add_library_flag(p)
    p = sub.add_parser("remove", help="drop an entry")
    p.add_argument("name")
    _add_library_flag(p)
    p = sub.add_parser(
        "compress",
        help="joint SVD of the entries' weight updates: size vs error per adapter over shared ranks",
    )
    p.add_argument(
        "--rank",
        dest="ranks",
        type=int,
        action="append",
        default=None,
        metavar="R",
        help="shared rank per layer (repeatable; default: full, 64, 32, 16, 8, 4)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="write the compressed library at the lowest --rank to this .safetensors file",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    _add_library_flag(p)


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def run(args: argparse.Namespace) -> int:
    from salt_seg.library import Library

    lib = Library.open(args.library)
    if args.action == "add":
        entry = lib.add(args.source, args.name, force=args.force)
        print(
            f"added {entry['name']} ({entry['method']}, {_fmt_params(entry['parameters'])} parameters) to {lib.root} "
            f"(base {entry['base_hash'][:12]}…)"
        )
        return 0
    if args.action == "remove":
        lib.remove(args.name)
        print(f"removed {args.name} from {lib.root}")
        return 0
    if args.action == "list":
        entries = lib.entries()
        if not entries:
            print(f"{lib.root}: empty library")
            return 0
        index = lib.index()
        print(f"{lib.root}: base {index['base_name']} ({index['base_hash'][:12]}…)")
        print(f"{'name':<24} {'method':<8} {'params':>9}  {'added':<24} classes")
        for name, e in entries.items():
            classes = e.get("classes")
            names = list(classes.values()) if isinstance(classes, dict) else classes or []
            print(
                f"{name:<24} {e['method'] or '?':<8} {_fmt_params(e['parameters']):>9}  {e['added']:<24} {names}"
            )
        return 0
    assert args.action == "compress"
    from salt_seg.commands.common import resolve_device
    from salt_seg.library import compress_library, format_compression

    report = compress_library(lib, ranks=args.ranks, out=args.out, device=resolve_device(args.device))
    print(format_compression(report))
    if args.out:
        print(f"wrote {args.out}")
    return 0
