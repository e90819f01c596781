"""Command-line tools behind ``recis-compat`` subcommands (check-script, ...)."""
