"""`python -m kronos_jobs` is the `kronos-jobs` command."""

from kronos_jobs.cli import main

# Guarded: the API's upload-parsing processes (api/parsing_pool.py) are spawned, and a spawned
# process imports the parent's main module again; it must not start a second command.
if __name__ == "__main__":
    main()
