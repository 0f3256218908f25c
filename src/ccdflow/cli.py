"""The ``ccdflow`` command: the same library calls the workflow's rules make.

    ccdflow init RAW [RAW ...] [--name NAME] [--out DIR] [--force]
    ccdflow simulate OUTDIR [--preset demo] [--set seed=7 --set n_science=20] [--damaged truncated,...]
    ccdflow inventory PATH [PATH ...] --instrument NAME [--out inventory.ecsv]
    ccdflow profiles
    ccdflow campaign diff A B [--results-dir results] [--json report.json]
    ccdflow campaign manifest NAME [--results-dir results]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def _parse_overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _init(args) -> int:
    from .draftio import init_night, render_report

    try:
        draft, profile_path, config_path = init_night(args.raw, name=args.name, out_dir=args.out, force=args.force)
    except FileExistsError as err:
        print(f"ccdflow: error: {err}", file=sys.stderr)
        return 2
    print(render_report(draft, profile_path, config_path), end="")
    return 0


def _simulate(args) -> int:
    from .simulate import NightSpec, simulate_night

    overrides = _parse_overrides(args.set)
    if args.damaged:
        overrides["damaged"] = [d for d in args.damaged.split(",") if d]
    spec = NightSpec.from_dict(overrides, base=args.preset)
    truth = simulate_night(args.outdir, spec)
    print(f"simulated night in {args.outdir}/raw, truth in {args.outdir}/truth: {truth.get('counts')}")
    return 0


def _inventory(args) -> int:
    from .instrument import load_profile
    from .inventory import (
        NightRule,
        RawSource,
        checked_raw_files,
        summarise,
        take_inventory,
        write_inventory,
    )
    from .paths import instruments_dir

    # as the workflow looks a name up: the folder given, then the shipped profiles
    search = ([args.instruments_dir] if args.instruments_dir else []) + [instruments_dir()]
    profile = load_profile(args.instrument, search)
    files = checked_raw_files([RawSource(p, args.instrument) for p in args.paths])
    table = take_inventory(files, {args.instrument: profile}, NightRule(args.boundary_hour, args.utc_offset_hours))
    if args.out:
        parquet = Path(args.out).with_suffix(".parquet")
        write_inventory(table, args.out, parquet)
        print(f"wrote {args.out} and {parquet}", file=sys.stderr)
    print(summarise(table), end="")
    return 0


def _profiles(args) -> int:
    from .instrument import load_profile
    from .paths import instruments_dir

    for path in sorted(instruments_dir().glob("*.yaml")):
        profile = load_profile(path)
        print(f"{profile.name:12s} {profile.get('description', '')}")
    return 0


def _campaign_dir(name: str, results_dir: str) -> Path:
    """A campaign given by name (under the results folder) or as a folder path."""
    path = Path(results_dir) / name
    return path if path.is_dir() or not Path(name).is_dir() else Path(name)


def _campaign_diff(args) -> int:
    import json

    from .campaign import diff_campaigns, format_diff

    report = diff_campaigns(_campaign_dir(args.a, args.results_dir), _campaign_dir(args.b, args.results_dir))
    print(format_diff(report, limit=args.limit))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))
    return 0


def _campaign_manifest(args) -> int:
    from .manifest import read_manifest

    manifest = read_manifest(_campaign_dir(args.name, args.results_dir))
    rules = {}
    for product in manifest["products"].values():
        rule = manifest["jobs"].get(product["job"], {}).get("rule", "(unknown)")
        rules[rule] = rules.get(rule, 0) + 1
    print(f"{manifest['campaign']}: {manifest['n_products']} products, {manifest['software']}, "
          f"config {manifest['config_hash']}, written {manifest['written']}, {len(manifest['raw'])} raw files")
    for commit, n_jobs in manifest.get("job_commits", {}).items():
        print(f"  code: commit {commit} made {n_jobs} job(s)")
    for rule, count in sorted(rules.items()):
        print(f"  {rule:24s} {count}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccdflow", description="CCD reduction and photometry pipeline")
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="draft an instrument profile and a night config from raw FITS headers")
    init.add_argument("raw", nargs="+", metavar="RAW", help="folders (searched recursively) or glob patterns")
    init.add_argument("--name", default=None,
                      help="profile and campaign name (default: from TELESCOP or INSTRUME, else the folder)")
    init.add_argument("--out", default=".", help="folder to write <name>.yaml and <name>-night.yaml into")
    init.add_argument("--force", action="store_true", help="overwrite files of those names")
    init.set_defaults(func=_init)

    sim = commands.add_parser("simulate", help="simulate a raw night with known truth")
    sim.add_argument("outdir", help="folder to write raw/ and truth/ into")
    sim.add_argument("--preset", choices=["demo", "tiny", "benchmark"], default="demo")
    sim.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a NightSpec field (repeatable), e.g. --set n_science=20")
    sim.add_argument("--damaged", default="", help="comma list: zero_length,truncated,not_fits,missing_exptime,wrong_shape")
    sim.set_defaults(func=_simulate)

    inv = commands.add_parser("inventory", help="inventory raw FITS files and print a summary")
    inv.add_argument("paths", nargs="+", help="folders (searched recursively) or glob patterns")
    inv.add_argument("--instrument", required=True, help="profile name or path to a profile YAML")
    inv.add_argument("--instruments-dir", default=None, help="folder of your own profiles, searched before the shipped ones (the checkout's config/instruments)")
    inv.add_argument("--out", default=None, help="write the table here (.ecsv) and beside it as .parquet")
    inv.add_argument("--boundary-hour", type=float, default=12.0, help="local hour that separates nights")
    inv.add_argument("--utc-offset-hours", type=float, default=None,
                     help="fixed local-time offset (default: mean solar time at the site)")
    inv.set_defaults(func=_inventory)

    prof = commands.add_parser("profiles", help="list the instrument profiles shipped")
    prof.set_defaults(func=_profiles)

    camp = commands.add_parser("campaign", help="reprocessing campaigns: manifests and differences")
    camp_commands = camp.add_subparsers(dest="campaign_command", required=True)
    diff = camp_commands.add_parser("diff", help="products added, removed and changed from campaign A to B")
    diff.add_argument("a", help="campaign name (under --results-dir) or folder")
    diff.add_argument("b", help="campaign name (under --results-dir) or folder")
    diff.add_argument("--results-dir", default="results")
    diff.add_argument("--json", default=None, help="also write the full comparison here")
    diff.add_argument("--limit", type=int, default=50, help="lines shown per list")
    diff.set_defaults(func=_campaign_diff)
    man = camp_commands.add_parser("manifest", help="summarise a campaign's manifest")
    man.add_argument("name", help="campaign name (under --results-dir) or folder")
    man.add_argument("--results-dir", default="results")
    man.set_defaults(func=_campaign_manifest)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .runlog import log_to

    args = build_parser().parse_args(argv)
    log_to(None)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"ccdflow: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
