"""Command line: train a model into the registry, list versions, promote, roll back.

    python -m training imdb_sentiment --data ../shared/data/aclImdb.tar.gz
    python -m training list
    python -m training promote imdb_sentiment 2        # or: latest
    python -m training rollback imdb_sentiment

Training writes a new version and never changes what is served; `promote` does.
TensorFlow is imported only by the training commands.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from service.registry import Registry, RegistryError
from training.datasets import DataError

MODELS = {
    "imdb_sentiment": "training.imdb_sentiment",
    "boston_housing": "training.boston_housing",
    "image_classifier": "training.image_classifier",
}
DEFAULT_REGISTRY = os.environ.get("MODELSERVE_MODEL_ROOT", "models")


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join([*MODELS, "list", "promote", "rollback"]) + "}")
    for name, module_name in MODELS.items():
        sub = commands.add_parser(name, help=f"train {name} into a new registry version")
        sub.add_argument("--registry", default=DEFAULT_REGISTRY, help="model registry root (default: %(default)s)")
        sub.add_argument("--seed", type=int, default=0)
        sub.set_defaults(module=module_name)
        if argv and argv[0] == name:  # import a trainer (and TensorFlow) only when it runs
            importlib.import_module(module_name).add_arguments(sub)
    listing = commands.add_parser("list", help="versions per model, * marks CURRENT")
    listing.add_argument("--registry", default=DEFAULT_REGISTRY)
    promote = commands.add_parser("promote", help="point CURRENT at a version (atomic)")
    promote.add_argument("model")
    promote.add_argument("version", help="a version number or 'latest'")
    promote.add_argument("--registry", default=DEFAULT_REGISTRY)
    rollback = commands.add_parser("rollback", help="point CURRENT back at the previously served version")
    rollback.add_argument("model")
    rollback.add_argument("--registry", default=DEFAULT_REGISTRY)
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
    print(f"   served version unchanged (CURRENT = {current}); to serve this one: python -m training promote {version.name} {version.version}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(argv).parse_args(argv)
    try:
        if args.command in MODELS:
            return _train(args)
        registry = Registry(args.registry)
        if args.command == "list":
            for name in registry.model_names():
                current = registry.current_version(name)
                print(f"{name}: " + " ".join(f"{v}*" if v == current else str(v) for v in registry.versions(name)))
        elif args.command == "promote":
            version = max(registry.versions(args.model), default=0) if args.version == "latest" else int(args.version)
            previous = registry.promote(args.model, version)
            print(f"{args.model}: CURRENT {previous} -> {version}")
        elif args.command == "rollback":
            old, new = registry.rollback(args.model)
            print(f"{args.model}: CURRENT {old} -> {new} (rollback)")
        return 0
    except (RegistryError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
