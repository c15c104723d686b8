"""Command line: train a model into the registry, list versions, promote, roll back.

    python -m training MODEL --data PATH [trainer options]     # MODEL: one of the catalog's (see --help)
    python -m training list
    python -m training promote MODEL 2                         # or: latest
    python -m training rollback MODEL

Training writes a new version and never changes what is served; `promote` does.
TensorFlow is imported only by the training commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from service.core.catalog import CATALOG
from service.core.config import Settings
from service.core.errors import UsageError, run_cli
from service.core.registry import Registry


def add_trainer_commands(
    commands: argparse._SubParsersAction, argv: list[str], verb: str, registry: str
) -> dict[str, argparse.ArgumentParser]:
    """One subcommand per catalog model; its trainer (and TensorFlow) is imported only when that command runs."""
    parsers = {}
    for name, entry in CATALOG.items():
        sub = commands.add_parser(name, help=f"{verb} {name}")
        sub.add_argument("--registry", default=registry, help="model registry root (default: MODELSERVE_MODEL_ROOT, else %(default)s)")
        sub.add_argument("--seed", type=int, default=0)
        sub.set_defaults(model=name, module=entry.trainer)
        if argv and argv[0] == name:
            importlib.import_module(entry.trainer).add_arguments(sub)
        parsers[name] = sub
    return parsers


def _parser(argv: list[str], registry: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join([*CATALOG, "list", "promote", "rollback"]) + "}")
    add_trainer_commands(commands, argv, "train into a new registry version:", registry)
    listing = commands.add_parser("list", help="versions per model, * marks CURRENT")
    listing.add_argument("--registry", default=registry)
    promote = commands.add_parser("promote", help="point CURRENT at a version (atomic)")
    promote.add_argument("model")
    promote.add_argument("version", help="a version number or 'latest'")
    promote.add_argument("--registry", default=registry)
    rollback = commands.add_parser("rollback", help="point CURRENT back at the previously served version")
    rollback.add_argument("model")
    rollback.add_argument("--registry", default=registry)
    return parser


def _train(args: argparse.Namespace) -> int:
    from training.publish import publish

    started = time.monotonic()
    module = importlib.import_module(args.module)
    result = module.train(args)
    registry = Registry(args.registry)
    version = publish(result, registry)
    metadata = version.read_metadata()
    test = metadata["metrics"]["test"]
    shown = {k: v for k, v in test.items() if isinstance(v, (int, float))}
    current = registry.current_version(version.name)
    print()
    print(f"== {version.name} v{version.version} written to {version.path} in {time.monotonic() - started:.0f}s")
    print("   test: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
    print(f"   parity: max abs diff {metadata['parity']['max_abs_diff']:.2e} on {metadata['parity']['samples']} inputs")
    print(f"   model.onnx {metadata['model_bytes'] / 1e6:.2f} MB, plots: {', '.join(metadata['plots'])}")
    print(
        f"   served version unchanged (CURRENT = {current}); to serve this one: python -m training promote {version.name} {version.version}"
    )
    return 0


def _registry_command(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    if args.command == "list":
        for name in registry.model_names():
            current = registry.current_version(name)
            print(f"{name}: " + " ".join(f"{v}*" if v == current else str(v) for v in registry.versions(name)))
    elif args.command == "promote":
        if args.version != "latest" and not args.version.isdecimal():
            raise UsageError(f"version must be a number or 'latest', got {args.version!r}")
        version = max(registry.versions(args.model), default=0) if args.version == "latest" else int(args.version)
        previous = registry.promote(args.model, version)
        print(f"{args.model}: CURRENT {previous} -> {version}")
    elif args.command == "rollback":
        old, new = registry.rollback(args.model)
        print(f"{args.model}: CURRENT {old} -> {new} (rollback)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int:
        args = _parser(argv, str(Settings.from_env().model_root)).parse_args(argv)
        return _train(args) if args.command in CATALOG else _registry_command(args)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
