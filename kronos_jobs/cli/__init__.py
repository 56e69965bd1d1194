"""The `kronos-jobs` command and what only it uses: demo report, sample data, upstream YAML import."""

from kronos_jobs.cli.commands import main

__all__ = ["main"]
