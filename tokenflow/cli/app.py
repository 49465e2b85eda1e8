"""The ``tf`` group and the console entry point."""

from __future__ import annotations

import errno
import os
import sys
import warnings

import click

from tokenflow import __version__
from tokenflow.cli.common import DEBUG_ENV
from tokenflow.memory import limit_arenas


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tokenflow")
@click.option("--debug", is_flag=True, help=f"Show tracebacks instead of one-line errors "
                                            f"(also env {DEBUG_ENV}=1).")
def cli(debug: bool) -> None:
    """tokenflow: consistent text-driven video editing with a frozen diffusion model."""



def main() -> None:
    """Console entry point: one clear line on errors, exit 130 on Ctrl-C.

    Click's own handling is bypassed (``standalone_mode=False``) because it prints a usage
    error's "Usage:" and "Try --help" lines above the error, and turns Ctrl-C into "Aborted!"
    with exit 1.
    """
    # zarr's notice that the int8 feature store's delta codec is outside the zarr v3
    # specification (tokenflow.cache.quantized): expected, and no concern of the command's user
    warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")
    limit_arenas()  # peak memory that does not depend on which thread freed what
    try:
        code = cli.main(standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("interrupted: run the same command again to resume (finished work is kept "
                   "in the stage cache)", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `tf`: the help text, not an error
            exc.show()
            sys.exit(exc.exit_code)
        ctx = exc.ctx
        hint = f" ({ctx.command_path} --help)" if ctx is not None else ""
        click.echo(f"Error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.errno != errno.EPIPE:  # output piped into a closed reader (| head): quiet
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
