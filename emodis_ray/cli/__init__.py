"""The `emodis` command line: one console script, one subcommand per capability.

Each subcommand lives in the module of its layer (``data``, ``train``, ``evaluation``, ``bench``,
``cluster``), parses its flags and calls one function of the package with plain arguments; heavy modules
(torch, Ray) are imported inside the handlers so `emodis --help` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from emodis_ray.cli import bench, cluster, data, evaluation, train
from emodis_ray.config import ConfigError

DESCRIPTION = """\
emodis: disentangled audio-visual emotion recognition (Peri et al., ICASSP 2021) on Ray.

Typical flow:
  emodis synth data/ --people 12 --clips-per-person 24     write a synthetic EmoVox in the real formats
  emodis manifest emovox --mat data/senet50-ferplus-logits.mat --meta data/vox1_meta.csv \\
      --videos data/videos --out data/manifest.parquet     apply the EmoVox label rules
  emodis demo                                              all of the above, end to end

Every command takes --config (a preset: tiny, paper; or a YAML file) and --set SECTION.KEY=VALUE
overrides, e.g. --set model.spk_dim=64. Run `emodis COMMAND --help` for details.
"""


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    data.add_synth, data.add_manifest, data.add_preprocess, train.add_train, bench.add_bench,
    evaluation.add_evaluate, evaluation.add_compare, evaluation.add_report, train.add_reproduce,
    evaluation.add_predict, train.add_tune, train.add_study, train.add_demo, train.add_config, cluster.add_submit,
    cluster.add_jobs,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emodis", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from emodis_ray import __version__

    parser.add_argument("--version", action="version", version=f"emodis {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, ValueError, FileNotFoundError) as e:
        # Errors about the user's input: one clear line, no traceback (EMODIS_DEBUG=1 shows it).
        if os.environ.get("EMODIS_DEBUG"):
            raise
        print(f"emodis {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
