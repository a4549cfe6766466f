"""Write a Snakemake profile: the real SLURM profile deep-merged with test overrides.

    python merge_profile.py OUT_DIR BASE.yaml [OVERRIDE.yaml ...]

Snakemake's own profile stacking (--profile a --profile b) replaces whole top-level keys such as
set-resources; merging here keeps every entry of the real profile that the test does not change,
so the test exercises workflow/profiles/slurm/config.yaml itself. A value of null deletes a key.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def main(out_dir: str, base: str, *overrides: str) -> None:
    profile = yaml.safe_load(Path(base).read_text())
    for path in overrides:
        profile = deep_merge(profile, yaml.safe_load(Path(path).read_text()) or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(profile, sort_keys=False)
    (out / "config.yaml").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
