"""`python -m kronos_jobs.cli` is the `kronos-jobs` command (the launcher starts its children this way)."""

from kronos_jobs.cli.commands import main

main()
