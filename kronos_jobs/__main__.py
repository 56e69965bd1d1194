"""`python -m kronos_jobs` is the `kronos-jobs` command."""

from kronos_jobs.cli import main

main()
