"""The ``unclip`` root command (``cli.main``): it imports a subcommand's module only when that
subcommand runs, so ``unclip api`` never pays for torch."""
