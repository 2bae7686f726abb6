"""The ``vitp-geo`` command line (``main``) and one module per subcommand."""
