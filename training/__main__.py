"""Command line: train a model into the registry, list versions, promote, roll back.

    python -m training MODEL --data PATH [trainer options]     # MODEL: one of the catalog's (see --help)
    python -m training list
    python -m training promote MODEL 2                         # or: latest
    python -m training rollback MODEL
    python -m training quantize MODEL [VERSION] --data PATH    # a new version: VERSION + a checked INT8 variant
    python -m training profile MODEL [VERSION] --data PATH     # a new version: VERSION + a drift reference profile

Training writes a new version and never changes what is served; `promote` does.
TensorFlow is imported only by the training commands.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time

from service.core.catalog import CATALOG
from service.core.config import Settings
from service.core.drift import PROFILE_FILE
from service.core.errors import UsageError, run_cli
from service.core.registry import ModelVersion, Registry, RegistryError, interface_changes


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
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{" + ",".join([*CATALOG, "list", "promote", "rollback", "quantize", "profile"]) + "}"
    )
    add_trainer_commands(commands, argv, "train into a new registry version:", registry)
    listing = commands.add_parser("list", help="versions per model, * marks CURRENT")
    listing.add_argument("--registry", default=registry)
    promote = commands.add_parser("promote", help="point CURRENT at a version (atomic)")
    promote.add_argument("model")
    promote.add_argument("version", help="a version number or 'latest'")
    promote.add_argument("--registry", default=registry)
    promote.add_argument("--yes", action="store_true", help="promote even when the labels or inputs differ from the served version's")
    rollback = commands.add_parser("rollback", help="point CURRENT back at the previously served version")
    rollback.add_argument("model")
    rollback.add_argument("--registry", default=registry)
    quantize = commands.add_parser("quantize", help="a new version: an existing one plus a checked INT8 variant (image models)")
    quantize.add_argument("model", choices=list(CATALOG))
    quantize.add_argument("version", nargs="?", help="the version to start from (default: CURRENT)")
    quantize.add_argument("--data", help="the training data: calibration from its training split, the check on its test split")
    quantize.add_argument("--seed", type=int, default=0)
    quantize.add_argument("--registry", default=registry)
    profile = commands.add_parser("profile", help="a new version: an existing one plus a reference profile for drift monitoring")
    profile.add_argument("model", choices=list(CATALOG))
    profile.add_argument("version", nargs="?", help="the version to start from (default: CURRENT)")
    profile.add_argument("--data", help="the data the version was trained on: inputs from its training split, answers on its test split")
    profile.add_argument("--seed", type=int, default=0, help="the split seed, as in training (tables without a split)")
    profile.add_argument("--registry", default=registry)
    return parser


def _source_version(registry: Registry, model: str, version: str | None) -> ModelVersion:
    if version is not None and not version.isdecimal():
        raise UsageError(f"version must be a number, got {version!r}")
    return registry.current(model) if version is None else registry.get(model, int(version))


def _profile(args: argparse.Namespace) -> int:
    from training.profile import add_profile

    module = importlib.import_module(CATALOG[args.model].trainer)
    if not hasattr(module, "profile_data"):
        raise UsageError(f"{args.model}: its trainer ({CATALOG[args.model].trainer}) gives no data to profile (profile_data)")
    registry = Registry(args.registry)
    source = _source_version(registry, args.model, args.version)
    inputs, held_out, data = module.profile_data(args, source.verify()["preprocessing"])
    version = add_profile(registry, source, inputs, held_out, data)
    same = version.read_metadata()["profile"]["same_data_as_training"]
    print(
        f"== {version.name} v{version.version}: v{source.version} + {PROFILE_FILE}"
        f" ({'its training data' if same else 'OTHER data than it was trained on'}); model.onnx unchanged; CURRENT unchanged"
    )
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from training.quantize import add_int8_variant

    module = importlib.import_module(CATALOG[args.model].trainer)
    if not hasattr(module, "quantization_data"):
        raise UsageError(f"{args.model} has no INT8 variant: its trainer ({CATALOG[args.model].trainer}) gives no calibration data")
    registry = Registry(args.registry)
    source = _source_version(registry, args.model, args.version)
    calibration, test_inputs, test_labels, shifted = module.quantization_data(args, source.verify()["preprocessing"])
    version = add_int8_variant(registry, source, calibration, test_inputs, test_labels, shifted)
    variant = version.read_metadata()["variants"]["int8"]
    state = "written" if variant["written"] else "REFUSED (not written)"
    print(f"== {version.name} v{version.version}: v{source.version} + INT8 variant {state}; CURRENT unchanged")
    print(f"   to serve it: {promote_command(version.name, version.version, args.registry)}")
    return 0


def promote_command(name: str, version: int, registry: str) -> str:
    """The command that serves a version, naming the registry it is in (run as printed, it moves no other registry's CURRENT)."""
    return f"python -m training promote {name} {version} --registry {shlex.quote(registry)}"


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
    int8 = metadata.get("variants", {}).get("int8")
    if int8 is not None:
        check, state = int8["check"], f"{int8['file']} {int8.get('bytes', 0) / 1e6:.2f} MB" if int8["written"] else "INT8 REFUSED"
        print(
            f"   {state}: accuracy {check['accuracy_int8']:.4f} vs fp32 {check['accuracy_fp32']:.4f}, same label {check['label_agreement']:.2%}"
        )
    print(
        f"   served version unchanged (CURRENT = {current}); to serve this one: {promote_command(version.name, version.version, args.registry)}"
    )
    return 0


def _refuse_interface_change(registry: Registry, name: str, version: int) -> None:
    """A promotion that changes the labels or inputs clients of the served version rely on needs --yes (UsageError without)."""
    try:
        current = registry.current_version(name)
    except RegistryError:  # a damaged CURRENT: pointing it at a good version is the repair
        return
    if current is None or current == version:
        return
    changes = interface_changes(registry.get(name, current).read_metadata(), registry.get(name, version).read_metadata())
    if changes:
        raise UsageError(
            f"{name} v{version} in {registry.root} is not a drop-in for the served v{current}: {'; '.join(changes)}. "
            "Clients of the served version would break; pass --yes to promote it anyway"
        )


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
        if not args.yes:
            _refuse_interface_change(registry, args.model, version)
        previous = registry.promote(args.model, version)
        print(f"{args.model}: CURRENT {previous} -> {version} in {registry.root}")
    elif args.command == "rollback":
        old, new = registry.rollback(args.model)
        print(f"{args.model}: CURRENT {old} -> {new} (rollback)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int:
        args = _parser(argv, str(Settings.from_env().model_root)).parse_args(argv)
        if args.command == "quantize":
            return _quantize(args)
        if args.command == "profile":
            return _profile(args)
        return _train(args) if args.command in CATALOG else _registry_command(args)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
