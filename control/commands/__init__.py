"""One module per ``streamgate`` verb: ``HELP``, ``add_arguments(parser)``, ``main(args, config)``."""
