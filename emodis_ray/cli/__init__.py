"""The `emodis` command line: one console script, one subcommand per capability.

Each subcommand lives in the module of its layer (``data``, ``train``, ``evaluation``, ``bench``,
``cluster``), parses its flags and calls one function of the package with plain arguments; heavy modules
(torch, Ray) are imported inside the handlers so `emodis --help` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
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
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's own INFO lines, progress bars and the workers' output (same as "
                             "EMODIS_VERBOSE=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


INTERRUPTED = "interrupted; run the same command again to resume"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ["EMODIS_VERBOSE"] = "1"  # read by the Ray session (and inherited by its workers)
    from emodis_ray.runtime.session import ClusterUnreachable

    with SigintSeen() as sigint:
        try:
            rc = int(args.func(args))
        except (ConfigError, ValueError, FileNotFoundError, ClusterUnreachable) as e:
            # Errors about the user's input or cluster: one clear line, no traceback (EMODIS_DEBUG=1 shows it);
            # an error on the way out of an interrupted run is not news, the interruption is.
            if not sigint.seen():
                if os.environ.get("EMODIS_DEBUG"):
                    raise
                print(f"emodis {args.command}: error: {one_line(e)}", file=sys.stderr)
                return 2
        except KeyboardInterrupt:
            pass
        except SystemExit:  # Ray Train's own Ctrl-C handler aborts the run, then calls sys.exit(0)
            if not sigint.seen():
                raise
        else:
            if not sigint.seen():
                return rc
    again = "with --resume" if args.command == "tune" else "again"  # a search resumes only when asked to
    print(f"emodis {args.command}: {INTERRUPTED.replace('again', again)}", file=sys.stderr)
    return 130


def one_line(e: BaseException) -> str:
    """The first line of an error's message (a FileNotFoundError from the OS names its file)."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


class SigintSeen:
    """Whether a Ctrl-C arrived while the command ran, whoever's handler took it (Ray Train and Ray Tune
    install their own): the C-level wake-up fd of :mod:`signal` records every signal with a Python handler."""

    def __enter__(self) -> SigintSeen:
        import signal
        import socket

        self._signal, self._got = signal, False
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        try:
            self._old = signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main thread (tests call main() from threads): nothing to watch
            self._old = None
        return self

    def seen(self) -> bool:
        with contextlib.suppress(BlockingIOError):
            self._got |= self._signal.SIGINT in self._r.recv(256)
        return self._got

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            self._signal.set_wakeup_fd(self._old)
        self._r.close()
        self._w.close()


if __name__ == "__main__":
    sys.exit(main())
