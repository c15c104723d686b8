"""A drift report a person reads: each feature's live histogram against the version's reference, worst first.

    python -m training.drift MODEL                        # from the running service (MODELSERVE_URL)
    python -m training.drift MODEL --log DIR              # from a prediction log (MODELSERVE_PREDICTION_LOG_DIR)
    python -m training.drift MODEL --log DIR --version 3 --last 5000 --output drift.png

From the service, the report is its last computation (GET /models/MODEL/drift: every
worker's window together). From a prediction log, the logged summaries of the version
(default: the one logged last; `--last N` rows) are binned against that version's
profile.json in the registry, with the same code the service runs. Prints one line per
feature and writes a PNG: reference and live histograms side by side, the worst first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import httpx

from service.core.config import ClientSettings, Settings
from service.core.drift import METRIC_NAME, compare, read_profile
from service.core.errors import DeployError, NotFoundError, UsageError, run_cli
from service.core.prediction_log import column
from service.core.registry import Registry

TIMEOUT_S = 30


def from_service(url: str, name: str, version: int | None) -> dict[str, Any]:
    """The service's last drift computation for `version` (default: the version CURRENT serves)."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/models/{name}/drift", timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise DeployError(
            f"cannot reach the service at {url} ({exc}); set MODELSERVE_URL or pass --url, or read a log with --log"
        ) from None
    if response.status_code != 200:
        raise DeployError(f"GET /models/{name}/drift: HTTP {response.status_code}: {response.text[:300]}")
    report = response.json()
    if not report.get("enabled"):
        raise DeployError(f"{name}: {report.get('reason', 'drift is off')}")
    versions = report.get("versions") or []
    chosen = [v for v in versions if (v["version"] == version if version is not None else v["role"] == "current")]
    if not chosen:
        raise NotFoundError(f"{name}: no drift report for {'v' + str(version) if version else 'the current version'} yet: {report}")
    entry = chosen[0]
    if not entry.get("available"):
        raise DeployError(f"{name} v{entry['version']}: drift unavailable: {entry.get('reason')}")
    return entry | {"threshold": report["threshold"], "source": f"{url} (every worker's window, computed {entry.get('computed_at')})"}


def from_log(directory: Path, name: str, version: int | None, last: int | None, registry: Registry, threshold: float) -> dict[str, Any]:
    """A report like the service's, from the prediction log's rows of one version, against its profile in `registry`."""
    import pandas as pd

    folder = directory / name
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise NotFoundError(f"{folder}: no prediction log files (is MODELSERVE_PREDICTION_LOG_DIR this directory?)")
    rows = pd.concat([pd.read_parquet(path) for path in files], ignore_index=True).sort_values("time", kind="stable")
    version = int(rows["version"].iloc[-1]) if version is None else version
    rows = rows[rows["version"] == version]
    if last:
        rows = rows.tail(last)
    if rows.empty:
        raise NotFoundError(f"{folder}: no rows of v{version}")
    logged = registry.get(name, version)
    profile = read_profile(logged.path, logged.read_metadata()["preprocessing"]["kind"])
    features = []
    for feature in profile.features:
        name_in_log = column(feature.name)
        values = rows[name_in_log].tolist() if name_in_log in rows else []
        indices = feature.bin_indices(values)
        counts = [int((indices == i).sum()) for i in range(feature.bins)]
        features.append(compare(feature, counts, threshold))
    features.sort(key=lambda f: -1.0 if f["score"] is None else f["score"], reverse=True)
    spans = f"{rows['time'].min():%Y-%m-%d %H:%M} to {rows['time'].max():%Y-%m-%d %H:%M} UTC"
    return {
        "version": version,
        "window": {"items": len(rows)},
        "features": features,
        "threshold": threshold,
        "source": f"{folder} ({len(files)} files, {len(rows):,} rows, {spans})",
    }


def table(name: str, report: dict[str, Any]) -> str:
    lines = [
        f"{name} v{report['version']}: {report['window']['items']:,} live items from {report['source']}",
        f"{METRIC_NAME}; drifted above {report['threshold']}",
        f"{'feature':<18} {'role':<7} {'JS distance':>11} {'PSI':>8} {'live':>7}  drifted",
    ]
    for f in report["features"]:
        score = "-" if f["score"] is None else f"{f['score']:.3f}"
        psi = "-" if f["psi"] is None else f"{f['psi']:.3f}"
        lines.append(f"{f['name']:<18} {f['role']:<7} {score:>11} {psi:>8} {sum(f['live']):>7,}  {'YES' if f['drifted'] else ''}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.drift", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="a model of the registry")
    parser.add_argument(
        "--url", default=ClientSettings.from_env().url, help="the running service (default: MODELSERVE_URL, else %(default)s)"
    )
    parser.add_argument("--log", type=Path, help="a prediction log directory instead of the service")
    parser.add_argument("--version", type=int, help="the version (default: the one served, or the one logged last)")
    parser.add_argument("--last", type=int, help="with --log: only the last N rows of the version")
    parser.add_argument("--registry", default=str(Settings.from_env().model_root), help="with --log: the registry holding the profile")
    parser.add_argument("--output", type=Path, help="the PNG (default: drift-MODEL-vVERSION.png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = _parser().parse_args(argv)
        if args.last is not None and args.last < 1:
            raise UsageError("--last must be at least 1")
        if args.log is not None:
            threshold = Settings.from_env().drift_threshold
            report = from_log(args.log, args.model, args.version, args.last, Registry(args.registry), threshold)
        else:
            report = from_service(args.url, args.model, args.version)
        print(table(args.model, report))
        from training.plots import plot_drift

        output = args.output or Path(f"drift-{args.model}-v{report['version']}.png")
        plot_drift(
            report["features"], output, f"{args.model} v{report['version']}: live ({report['window']['items']:,} items) vs reference"
        )
        print(f"histograms, worst first: {output}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
