"""Command line: train a model into the registry, list versions, promote, roll back.

    python -m training image   --name NAME --data DIR                       # your own models, by kind
    python -m training text    --name NAME --data FILE --text-column C --label-column L
    python -m training tabular --name NAME --data FILE --target T [--features A B ...]
    python -m training RECIPE [--data PATH] [trainer options]   # a shipped model's own recipe (listed below)
    python -m training list
    python -m training promote MODEL 2                         # or: latest
    python -m training rollback MODEL
    python -m training quantize MODEL [VERSION] --data PATH    # a new version: VERSION + a checked INT8 variant
    python -m training profile MODEL [VERSION] --data PATH     # a new version: VERSION + a drift reference profile

Training writes a new version and never changes what is served; `promote` does (a
running service serves a newly promoted model within its poll interval). Every version
records how it was trained (metadata training.recipe: the command, the kind, the options,
the data's path and fingerprint), so `python -m training.redeploy NAME --data NEW`
retrains it with the same recipe. TensorFlow is imported only by the training commands.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from service.core.catalog import RECIPES
from service.core.config import Settings
from service.core.drift import PROFILE_FILE
from service.core.errors import UsageError, run_cli
from service.core.registry import MODEL_NAME_RULE, ModelVersion, Registry, RegistryError, interface_changes, is_model_name
from training.kinds import TRAINERS

REGISTRY_COMMANDS = ("list", "promote", "rollback", "quantize", "profile")
NOT_RECORDED = ("data", "test_data", "name", "registry", "help")  # options a retrain takes anew, not from the recipe


def trainer_modules() -> dict[str, str]:
    """Every training command and its trainer module: the kinds, then the shipped recipes."""
    return TRAINERS | {name: recipe.trainer for name, recipe in RECIPES.items()}


def add_trainer_commands(
    commands: argparse._SubParsersAction, argv: list[str], verb: str, registry: str
) -> dict[str, argparse.ArgumentParser]:
    """One subcommand per kind and per shipped recipe; its trainer (and TensorFlow) is imported only when that command runs."""
    parsers = {}
    for command, module in trainer_modules().items():
        kind = command in TRAINERS
        sub = commands.add_parser(command, help=f"{verb} {'a model of your own: ' + command if kind else 'the shipped ' + command}")
        sub.add_argument("--registry", default=registry, help="model registry root (default: MODELSERVE_MODEL_ROOT, else %(default)s)")
        sub.add_argument("--seed", type=int, default=0)
        if kind:
            sub.add_argument("--name", required=True, help=f"the model's name in the registry and in URLs: {MODEL_NAME_RULE}")
        sub.set_defaults(model=None if kind else command, module=module, trainer_options=[])
        if argv and argv[0] == command:
            before = {a.dest for a in sub._actions}
            importlib.import_module(module).add_arguments(sub)
            sub.set_defaults(trainer_options=["seed", *(a.dest for a in sub._actions if a.dest not in before)])
        parsers[command] = sub
    return parsers


def check_name(name: str) -> None:
    if not is_model_name(name):
        raise UsageError(f"--name {name[:100]!r}: a model name is {MODEL_NAME_RULE}")
    if name in TRAINERS or name in REGISTRY_COMMANDS:
        raise UsageError(f"--name {name!r} is a command of this tool; choose another name")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def train_recipe(args: argparse.Namespace) -> Any:
    """Run the command's trainer; the result records how (metadata training.recipe), for a retrain on new data."""
    if args.model is None:  # a kind: the user names the model
        check_name(args.name)
        args.model = args.name
    result = importlib.import_module(args.module).train(args)
    options = {dest: _jsonable(getattr(args, dest)) for dest in args.trainer_options if dest not in NOT_RECORDED}
    result.training["recipe"] = {
        "command": args.command,
        "kind": result.preprocessing.get("kind"),
        "options": options,
        "data": {"path": _jsonable(args.data), "fingerprint": result.data.get("fingerprint")},
    }
    return result


def recorded_recipe(version: ModelVersion) -> dict[str, Any]:
    """How a version was trained (its metadata's training.recipe); UsageError when it predates the record."""
    recipe = version.read_metadata().get("training", {}).get("recipe")
    if not isinstance(recipe, dict) or recipe.get("command") not in trainer_modules() or not isinstance(recipe.get("options"), dict):
        raise UsageError(
            f"{version.name} v{version.version} does not record how it was trained (metadata training.recipe); "
            f"train it again with python -m training {'|'.join(TRAINERS)} --name {version.name} ..."
        )
    return recipe


def _parser(argv: list[str], registry: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join([*trainer_modules(), *REGISTRY_COMMANDS]) + "}")
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
    quantize.add_argument("model")
    quantize.add_argument("version", nargs="?", help="the version to start from (default: CURRENT)")
    quantize.add_argument("--data", help="the training data: calibration from its training split, the check on its test split")
    quantize.add_argument("--seed", type=int, default=0)
    quantize.add_argument("--registry", default=registry)
    profile = commands.add_parser("profile", help="a new version: an existing one plus a reference profile for drift monitoring")
    profile.add_argument("model")
    profile.add_argument("version", nargs="?", help="the version to start from (default: CURRENT)")
    profile.add_argument("--data", help="the data the version was trained on: inputs from its training split, answers on its test split")
    profile.add_argument("--seed", type=int, default=0, help="the split seed, as in training (tables without a split)")
    profile.add_argument("--registry", default=registry)
    return parser


def _source_version(registry: Registry, model: str, version: str | None) -> ModelVersion:
    if version is not None and not version.isdecimal():
        raise UsageError(f"version must be a number, got {version!r}")
    return registry.current(model) if version is None else registry.get(model, int(version))


def _trainer_of(source: ModelVersion, function: str, missing: str) -> Any:
    """The trainer module of a version's recipe (a shipped name's own, else the one its metadata records), which must have `function`."""
    trainer = RECIPES[source.name].trainer if source.name in RECIPES else trainer_modules()[recorded_recipe(source)["command"]]
    module = importlib.import_module(trainer)
    if not hasattr(module, function):
        raise UsageError(f"{source.name}: its trainer ({trainer}) {missing}")
    return module


def _profile(args: argparse.Namespace) -> int:
    from training.profile import add_profile

    registry = Registry(args.registry)
    source = _source_version(registry, args.model, args.version)
    module = _trainer_of(source, "profile_data", "gives no data to profile (profile_data)")
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

    registry = Registry(args.registry)
    source = _source_version(registry, args.model, args.version)
    module = _trainer_of(source, "quantization_data", "gives no calibration data: no INT8 variant")
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
    result = train_recipe(args)
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
        return _train(args) if args.command in trainer_modules() else _registry_command(args)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
